"""Who may use a ``swift rollout`` server: the holder of its API key, a shared secret.

The server takes its key from ``--api_key``, ``--api_key_file`` or the ``VLLM_API_KEY`` environment
variable (vLLM's name), in that order; with none of them it makes a random one at start-up and writes
it to a file only its owner can read (:func:`default_key_file`), whose path it logs. The trainer finds
the key the same ways (``--vllm_server_api_key``, ``--vllm_server_api_key_file``, ``VLLM_API_KEY``)
and, failing those, in that same file, so a trainer on the server's machine needs no flag at all.

Every request but ``GET /health`` must carry ``Authorization: Bearer <key>`` (vLLM's and OpenAI's
header). Generation is guarded too: it costs the server's compute and returns the model's output.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

API_KEY_ENV = "VLLM_API_KEY"
#: Paths anyone may call: a liveness probe that says nothing but "up".
OPEN_PATHS = frozenset({"/health"})


@dataclass(frozen=True)
class ApiKey:
    value: str = field(repr=False)  # never printed
    source: str  # where it came from, in words, for messages: "--api_key", "file /x/y.key", ...


def default_key_file(port: int) -> Path:
    """Where a server on ``port`` writes the key it generated, and where a trainer looks for it last."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "swift_cispo" / f"rollout-{port}.key"


def read_key_file(path: Path, flag: str) -> str:
    try:
        key = path.expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "not a text file"
        raise UserError(f"{flag} {path} cannot be read ({reason}); give a file holding the API key") from None
    if not key:
        raise UserError(f"{flag} {path} is empty; it must hold the API key")
    return key


def write_key_file(path: Path, key: str) -> None:
    """Write ``key`` readable by its owner only (mode 0600), replacing an older key there."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")


def _given_key(key: str | None, key_file: str | None, key_flag: str, file_flag: str) -> ApiKey | None:
    """The key given explicitly: a flag's value, a flag's file, then the environment variable."""
    if key:
        return ApiKey(key, key_flag)
    if key_file:
        return ApiKey(read_key_file(Path(key_file), file_flag), f"{file_flag} {key_file}")
    if os.environ.get(API_KEY_ENV):
        return ApiKey(os.environ[API_KEY_ENV], f"${API_KEY_ENV}")
    return None


def server_key(key: str | None, key_file: str | None, port: int) -> tuple[ApiKey, Path | None]:
    """The server's key, and the file it was written to when this call generated it."""
    given = _given_key(key, key_file, "--api_key", "--api_key_file")
    if given is not None:
        return given, None
    path = default_key_file(port)
    generated = secrets.token_urlsafe(32)  # 256 bits
    try:
        write_key_file(path, generated)
    except OSError as err:
        raise UserError(
            f"could not write the generated API key to {path} ({err.strerror}); give a key with --api_key_file or ${API_KEY_ENV}"
        ) from None
    return ApiKey(generated, f"generated, in {path}"), path


def given_trainer_key(key: str | None, key_file: str | None) -> ApiKey | None:
    """The key given to the trainer: ``--vllm_server_api_key``, its file, or ``$VLLM_API_KEY``; None if none."""
    return _given_key(key, key_file, "--vllm_server_api_key", "--vllm_server_api_key_file")


def generated_key(port: int) -> ApiKey | None:
    """The key a server on this machine generated for ``port``, if its file is there.

    Read once the server answers: the file is written at the server's start, and a restarted server
    replaces it.
    """
    path = default_key_file(port)
    if not path.is_file():
        return None
    return ApiKey(read_key_file(path, "the key file"), f"the key file {path}")


def key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison (of digests, so neither the length nor non-ASCII text matters)."""
    if given is None:
        return False
    return hmac.compare_digest(_digest(given), _digest(expected))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header in raw ASGI headers, or None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class RequireApiKey:
    """ASGI middleware: a request without the right key gets 401 before any handler (or body read) runs.

    A middleware rather than a per-route check, so that an endpoint added later is guarded by default.
    """

    def __init__(self, app, key: str):
        self.app = app
        self.key = key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            token = bearer_token(scope.get("headers", []))
            if not key_matches(token, self.key):
                from starlette.responses import JSONResponse

                reason = "no API key was sent" if token is None else "the API key is wrong"
                detail = f"{reason}; send the server's key as 'Authorization: Bearer <key>'"
                response = JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
