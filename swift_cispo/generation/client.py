"""HTTP client of a ``swift rollout`` server, with the interface TRL's generation code calls (``VLLMClient``'s)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import requests
import torch

from ..errors import ReportedError, UserError, first_line
from .auth import ApiKey, generated_key
from .wire import DEFAULT_BUCKET_BYTES, bucket_weights


class RolloutServerError(ReportedError, RuntimeError):
    """The rollout server is unreachable or failed; the message says which server and what to do.

    A failure of the environment, not of the command line: the CLI exits with status 1.
    """

    exit_code = 1


class RolloutServerRefused(RolloutServerError, UserError):
    """The server answered but refused: a missing or wrong API key (401), not a rollout server at all (404), or a
    request it cannot serve as asked (400, e.g. a multi-turn scheduler that rewrites its prompt).

    The user's settings are wrong, not the environment: an error of the command line (exit 2).
    """

    exit_code = 2


_KEY_FLAGS = "--vllm_server_api_key_file, --vllm_server_api_key or $VLLM_API_KEY"


def refusal(status: int, host: str, port: int, path: str, api_key: ApiKey | None) -> str | None:
    """The sentence for a 401 or 404 answer (what is wrong and what to do), or None for other statuses."""
    where = f"the rollout server at {host}:{port}"
    if status == 401 and api_key is None:
        return (f"{where} requires an API key and none was given; pass the key `swift rollout` printed at start-up "
                f"(a server given no key also wrote it to ~/.cache/swift_cispo/rollout-{port}.key on its machine) "
                f"with {_KEY_FLAGS}")
    if status == 401:
        return (f"{where} refused the API key from {api_key.source}; pass the key that server printed at start-up "
                f"(or the file it wrote) with {_KEY_FLAGS}")
    if status == 404:
        return (f"the service at {host}:{port} is not a `swift rollout` server (GET {path} answered HTTP 404); check "
                f"--vllm_server_host and --vllm_server_port, or start one with `swift rollout --model <model> --port {port}`")
    return None


class RolloutClient:
    """Talks to ``swift rollout`` at ``http://host:port``.

    ``generate``, ``update_named_params``, ``reset_prefix_cache`` and ``get_server_info`` match the
    methods of TRL's ``VLLMClient`` that its GRPO trainer calls, so TRL's server-mode code runs unchanged
    on top of this client; the weights travel as safetensors over HTTP, which needs no CUDA.

    Every request carries ``api_key``; without one, the key a server on this machine generated for
    ``port`` is read once the server answers (see :mod:`.auth`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        timeout: float = 240.0,
        request_timeout: float = 3600.0,
        api_key: ApiKey | None = None,
    ):
        self.host, self.port = host, port
        self.api_key = api_key
        self.group = None  # set by init_group: weights then travel over NCCL/gloo instead of HTTP
        self.group_device = "cpu"
        self.base_url = f"http://{host}:{port}"
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.session = requests.Session()
        self._use_key(api_key)

    def for_another_thread(self) -> "RolloutClient":
        """A client to the same server with its own HTTP session (a ``requests.Session`` is not thread-safe)."""
        return RolloutClient(self.host, self.port, self.timeout, self.request_timeout, self.api_key)

    # ------------------------------------------------------------------ plumbing
    def _use_key(self, api_key: ApiKey | None) -> None:
        self.api_key = api_key
        if api_key is not None:
            self.session.headers["Authorization"] = f"Bearer {api_key.value}"

    def _request(self, method: str, path: str, what: str, **kwargs):
        if self.api_key is None:  # none given: the key a server on this machine wrote (read late: it may restart)
            self._use_key(generated_key(self.port))
        try:
            response = self.session.request(method, self.base_url + path, timeout=self.request_timeout, **kwargs)
        except requests.RequestException as err:
            raise RolloutServerError(
                f"the rollout server at {self.host}:{self.port} stopped answering while {what} "
                f"({type(err).__name__}); check that `swift rollout` is still running there"
            ) from None
        refused = refusal(response.status_code, self.host, self.port, path.split("?")[0], self.api_key)
        if refused:
            raise RolloutServerRefused(refused)
        if response.status_code == 400:  # the server refused what was asked (e.g. a scheduler's misuse): the user's to fix
            raise RolloutServerRefused(_detail(response))
        if response.status_code != 200:
            raise RolloutServerError(f"the rollout server at {self.host}:{self.port} failed while {what}: {_detail(response)}")
        return response

    def wait_until_up(self, poll_interval: float = 1.0) -> dict:
        """Poll ``/health`` until the server answers, for up to ``timeout`` seconds; return its info."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                status = self.session.get(self.base_url + "/health", timeout=5).status_code
            except requests.RequestException:
                status = None
            if status == 200:
                return self.get_server_info()
            if status == 404:  # something else listens there: waiting would not help
                raise RolloutServerRefused(refusal(404, self.host, self.port, "/health", self.api_key))
            if time.monotonic() >= deadline:
                raise RolloutServerError(
                    f"no rollout server answered at {self.host}:{self.port} within {self.timeout:g} s; start one with "
                    f"`swift rollout --model <model> --host {self.host} --port {self.port}` or raise --vllm_server_timeout"
                )
            time.sleep(poll_interval)

    # ------------------------------------------------------------------ TRL VLLMClient interface
    def get_server_info(self) -> dict:
        return self._request("GET", "/info", "reading its info").json()

    def generate(
        self,
        prompts: list[list[int]],
        features=None,
        n: int = 1,
        repetition_penalty: float = 1.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        max_tokens: int = 16,
        logprobs: int | None = 0,
        structured_outputs_regex: str | None = None,
        generation_kwargs: dict | None = None,
    ) -> dict:
        if features is not None and any(f is not None for f in features):
            raise RolloutServerError("image prompts are not supported by `swift rollout`; use --vllm_mode colocate")
        payload = {
            "prompts": prompts,
            "n": n,
            "repetition_penalty": repetition_penalty,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "min_p": min_p,
            "max_tokens": max_tokens,
            "logprobs": logprobs,
            "structured_outputs_regex": structured_outputs_regex,
            "generation_kwargs": generation_kwargs or {},
        }
        return self._request("POST", "/generate", "generating completions", json=payload).json()

    def trajectories(self, payload: dict) -> list[dict]:
        """Multi-turn rollouts run by the server's scheduler (``swift rollout --multi_turn_scheduler``): rows of
        ``messages`` (and ``data_dict``) in, one finished trajectory per row out (see ``RolloutEngine.trajectories``)."""
        return self._request("POST", "/trajectories", "running multi-turn trajectories", json=payload).json()["trajectories"]

    def init_group(self, backend: str, group_port: int, device: str = "cpu") -> None:
        """Join a two-member NCCL (CUDA) or gloo (CPU) group with the server; later updates broadcast over it."""
        from .collective import TRAINER_RANK, open_group

        self._request("POST", "/weights/group/init", "setting up the weight transfer", json={"port": group_port, "backend": backend})
        try:
            self.group = open_group(self.host, group_port, TRAINER_RANK, backend, timeout_s=self.timeout)
        except Exception as err:
            raise RolloutServerError(
                f"could not join the weight-transfer group of the rollout server at {self.host}:{group_port} "
                f"({first_line(err)}); open that port "
                "or choose another with --vllm_group_port, or use --vllm_weight_transport http"
            ) from None
        self.group_device = device

    def update_named_params(
        self,
        metadata: list | None,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        version: int | None = None,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> None:
        """Send every weight to the server, which swaps them in at once.

        Over the group (after :meth:`init_group`), ``metadata`` (names, dtypes, shapes, in iteration
        order) must be given; over HTTP it is unused and the tensors travel as safetensors buckets.
        """
        if self.group is not None:
            self._update_over_group(metadata, named_tensors, version)
            return
        session = self._request("POST", "/weights/begin", "starting a weight update").json()["session"]
        for blob in bucket_weights(named_tensors, bucket_bytes):
            self._request(
                "POST",
                f"/weights/chunk?session={session}",
                "receiving weights",
                data=blob,
                headers={"Content-Type": "application/octet-stream"},
            )
        self._request("POST", "/weights/commit", "loading new weights", json={"session": session, "version": version})

    def _update_over_group(self, metadata: list, named_tensors, version: int | None) -> None:
        from .collective import broadcast

        self._request("POST", "/weights/group/update", "preparing a weight update", json={"metadata": metadata, "version": version})
        count = 0
        for (name, tensor), (expected, _, _) in zip(named_tensors, metadata, strict=True):
            if name != expected:
                raise RuntimeError(f"internal error: weight {name} sent where the server expects {expected}")
            broadcast(self.group, tensor.detach().to(self.group_device).contiguous())
            count += 1
        self._request("POST", "/weights/group/finish", "loading new weights")

    def reset_prefix_cache(self) -> None:
        self._request("POST", "/reset_prefix_cache", "resetting its prefix cache")

    def close_communicator(self) -> None:  # TRL calls this on shutdown; HTTP needs no teardown
        self.session.close()


def _detail(response) -> str:
    """The server's own sentence for a failed request (FastAPI's ``{"detail": ...}``), else its last line."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, str) and detail:
        return detail
    text = response.text.strip()
    return text.splitlines()[-1] if text else f"HTTP {response.status_code}"
