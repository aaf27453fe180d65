"""A rollout server only its trainer can use: the API key, the trainer's sentences, the group's bind address.

The server here is the real HTTP app and the real :class:`RolloutEngine`, served by uvicorn over
loopback, with a stand-in for the ``vllm.LLM`` it wraps (it records the weights it is given); the
real-engine counterpart is in test_vllm.py.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from types import SimpleNamespace

import pytest
import requests
import torch
from helpers import assert_clean_error, listening_addresses as _listening_addresses, swift

from swift_cispo.errors import UserError
from swift_cispo.generation import auth
from swift_cispo.generation.client import RolloutClient, RolloutServerRefused
from swift_cispo.generation.collective import SERVER_RANK, TRAINER_RANK, describe, open_group
from swift_cispo.generation.server import RolloutEngine, build_app

KEY = "right-key-" + "x" * 30


class FakeLLM:
    """What RolloutEngine uses of ``vllm.LLM``; records every weight reload."""

    def __init__(self):
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=64, logprobs_mode="processed_logprobs"))
        self.reloads: list[dict[str, torch.Tensor]] = []

    def collective_rpc(self, method, kwargs):
        assert method == "reload_weights"
        self.reloads.append({name: tensor.clone() for name, tensor in kwargs["weights_iterator"]})

    def reset_prefix_cache(self):
        pass

    def generate(self, prompts, params, use_tqdm=False):
        step = {7: SimpleNamespace(logprob=-0.5, rank=1)}
        completion = SimpleNamespace(token_ids=[7], logprobs=[step])
        return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[completion] * params.n) for p in prompts]


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LoopbackServer:
    """The rollout app under uvicorn in a thread, on 127.0.0.1."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served():
    llm = FakeLLM()
    engine = RolloutEngine(llm, "fake-model", host="127.0.0.1")
    app = build_app(engine, KEY)
    server = LoopbackServer(app)
    yield SimpleNamespace(llm=llm, engine=engine, app=app, url=server.url, port=server.port)
    server.stop()




# Every route of the app with a request that would change or read state if it got through.
def _route_requests(app) -> list[tuple[str, str]]:
    return sorted((method, route.path) for route in app.routes for method in route.methods if method != "HEAD")


def test_every_endpoint_but_health_needs_the_key(served):
    routes = _route_requests(served.app)
    state_changing = {
        ("POST", "/weights/begin"), ("POST", "/weights/chunk"), ("POST", "/weights/commit"),
        ("POST", "/weights/group/init"), ("POST", "/weights/group/update"), ("POST", "/weights/group/finish"),
        ("POST", "/reset_prefix_cache"),
    }  # fmt: skip
    assert state_changing <= set(routes)  # the endpoints named in server.py's docstring are all there
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}):
            response = requests.request(method, served.url + path, headers=headers, json={"port": 1}, timeout=10)
            if path == "/health":
                assert response.status_code == 200, (method, path)
            else:
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["WWW-Authenticate"] == "Bearer"
    # nothing got through: no weights loaded, no group opened, no update started
    assert served.llm.reloads == [] and served.engine.weight_version == -1
    assert served.engine._group_thread is None and served.engine._pending == {}
    # FastAPI's own schema and docs pages are not served either
    for path in ("/docs", "/openapi.json"):
        assert requests.get(served.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=10).status_code == 404


def test_the_right_key_reads_generates_and_updates_weights_over_http(served):
    client = RolloutClient("127.0.0.1", served.port, timeout=10, api_key=auth.ApiKey(KEY, "test"))
    assert client.wait_until_up()["model"] == "fake-model"
    out = client.generate([[1, 2, 3]], n=2, max_tokens=1)
    assert out["completion_ids"] == [[7], [7]] and out["logprobs"] == [[[-0.5]], [[-0.5]]]
    weights = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4)}
    client.update_named_params(None, weights.items(), version=5)
    assert served.engine.weight_version == 5
    assert served.llm.reloads[-1].keys() == weights.keys()
    assert all(torch.equal(served.llm.reloads[-1][k], v) for k, v in weights.items())
    client.reset_prefix_cache()  # raises on anything but 200


def test_a_wrong_key_cannot_commit_a_session_the_trainer_opened(served):
    good = {"Authorization": f"Bearer {KEY}"}
    session = requests.post(served.url + "/weights/begin", headers=good, timeout=10).json()["session"]
    bad = {"Authorization": "Bearer " + KEY[:-1] + "y"}  # one character off
    assert requests.post(served.url + f"/weights/chunk?session={session}", data=b"x", headers=bad, timeout=10).status_code == 401
    assert requests.post(served.url + "/weights/commit", json={"session": session}, headers=bad, timeout=10).status_code == 401
    assert served.llm.reloads == [] and served.engine.weight_version == -1


def test_group_listens_on_the_servers_host_and_carries_an_update(served):
    client = RolloutClient("127.0.0.1", served.port, timeout=30, api_key=auth.ApiKey(KEY, "test"))
    group_port = _free_port()
    joined = threading.Event()

    def trainer_side():
        client.init_group("gloo", group_port)
        joined.set()

    thread = threading.Thread(target=trainer_side, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not _listening_addresses(group_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _listening_addresses(group_port) == {"127.0.0.1"}  # not 0.0.0.0 / ::
    assert joined.wait(30)
    weights = [("w", torch.randn(3, 2)), ("v", torch.randn(5))]
    client.update_named_params(describe(weights), iter(weights), version=2)
    assert served.engine.weight_version == 2
    assert all(torch.equal(served.llm.reloads[-1][name], tensor) for name, tensor in weights)


def test_group_listens_on_all_interfaces_only_when_asked():
    port = _free_port()
    groups = {}
    thread = threading.Thread(target=lambda: groups.update(server=open_group("0.0.0.0", port, SERVER_RANK, "gloo", timeout_s=30)))
    thread.start()
    deadline = time.monotonic() + 30
    while not _listening_addresses(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _listening_addresses(port) == {"0.0.0.0"}
    groups["trainer"] = open_group("127.0.0.1", port, TRAINER_RANK, "gloo", timeout_s=30)
    thread.join(30)
    assert "server" in groups


# ------------------------------------------------------------------------------- the trainer's sentences
def test_missing_and_wrong_keys_are_one_sentence_naming_the_flags(served, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no key file a server wrote
    monkeypatch.delenv(auth.API_KEY_ENV, raising=False)
    with pytest.raises(RolloutServerRefused) as missing:
        RolloutClient("127.0.0.1", served.port, timeout=10).wait_until_up()
    assert str(missing.value).startswith(f"the rollout server at 127.0.0.1:{served.port} requires an API key and none was given;")
    assert "--vllm_server_api_key_file, --vllm_server_api_key or $VLLM_API_KEY" in str(missing.value)
    assert isinstance(missing.value, UserError)  # exit 2: the command line is wrong
    with pytest.raises(RolloutServerRefused, match=r"refused the API key from --vllm_server_api_key; pass the key"):
        RolloutClient("127.0.0.1", served.port, timeout=10, api_key=auth.ApiKey("nope", "--vllm_server_api_key")).generate([[1]])
    monkeypatch.setenv(auth.API_KEY_ENV, "nope")
    key = auth.given_trainer_key(None, None)
    with pytest.raises(RolloutServerRefused, match=r"refused the API key from \$VLLM_API_KEY"):
        RolloutClient("127.0.0.1", served.port, timeout=10, api_key=key).update_named_params(None, iter([("a", torch.ones(1))]))
    assert served.llm.reloads == []


def test_a_trainer_on_the_servers_machine_finds_the_generated_key(served, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(auth.API_KEY_ENV, raising=False)
    auth.write_key_file(auth.default_key_file(served.port), KEY)  # what `swift rollout` does at start
    assert RolloutClient("127.0.0.1", served.port, timeout=10).wait_until_up()["model"] == "fake-model"


def test_a_service_answering_404_is_named_as_the_wrong_service(tmp_path):
    from fastapi import FastAPI

    other = LoopbackServer(FastAPI())  # a web service with none of the rollout server's paths
    try:
        start = time.monotonic()
        with pytest.raises(RolloutServerRefused) as err:
            RolloutClient("127.0.0.1", other.port, timeout=60).wait_until_up()
        assert time.monotonic() - start < 10  # no waiting out the timeout
        assert str(err.value).startswith(f"the service at 127.0.0.1:{other.port} is not a `swift rollout` server (GET /health answered HTTP 404)")
    finally:
        other.stop()

    bare = FastAPI()  # e.g. `vllm serve`: its /health answers, /info does not
    bare.get("/health")(lambda: {})
    other = LoopbackServer(bare)
    try:
        with pytest.raises(RolloutServerRefused, match=r"is not a `swift rollout` server \(GET /info answered HTTP 404\); check --vllm_server_host and --vllm_server_port"):
            RolloutClient("127.0.0.1", other.port, timeout=10, api_key=auth.ApiKey(KEY, "test")).wait_until_up()
    finally:
        other.stop()


# ------------------------------------------------------------------------------- where keys come from
def test_server_key_order_flag_file_env_then_generated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(auth.API_KEY_ENV, "from-env")
    key_file = tmp_path / "k"
    key_file.write_text("from-file\n")
    assert auth.server_key("from-flag", str(key_file), 9000)[0].value == "from-flag"
    assert auth.server_key(None, str(key_file), 9000)[0] == auth.ApiKey("from-file", f"--api_key_file {key_file}")
    assert auth.server_key(None, None, 9000) == (auth.ApiKey("from-env", "$VLLM_API_KEY"), None)
    monkeypatch.delenv(auth.API_KEY_ENV)
    first, path = auth.server_key(None, None, 9000)
    assert path == tmp_path / "cache" / "swift_cispo" / "rollout-9000.key"
    assert path.read_text().strip() == first.value and len(first.value) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second, _ = auth.server_key(None, None, 9000)
    assert second.value != first.value and path.read_text().strip() == second.value  # each start: a new key
    assert first.value not in repr(first)
    # the trainer: explicit first, then the generated file (read lazily by the client)
    assert auth.given_trainer_key(None, None) is None
    assert auth.generated_key(9000) == auth.ApiKey(second.value, f"the key file {path}")
    assert auth.generated_key(9001) is None


def test_a_key_file_written_with_loose_permissions_is_tightened(tmp_path):
    path = tmp_path / "k"
    path.write_text("old")
    os.chmod(path, 0o644)
    auth.write_key_file(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "new\n"


def test_unreadable_or_empty_key_files_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match=r"^--api_key_file .*missing cannot be read \(No such file or directory\); give a file holding the API key$"):
        auth.server_key(None, str(tmp_path / "missing"), 9000)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UserError, match=r"^--vllm_server_api_key_file .*empty is empty; it must hold the API key$"):
        auth.given_trainer_key(None, str(tmp_path / "empty"))


def test_key_comparison():
    assert auth.key_matches(KEY, KEY)
    assert not auth.key_matches(None, KEY) and not auth.key_matches("", KEY) and not auth.key_matches(KEY + "x", KEY)
    assert not auth.key_matches("ключ", KEY)  # non-ASCII: no TypeError from compare_digest
    assert auth.bearer_token([(b"authorization", b"Bearer abc")]) == "abc"
    assert auth.bearer_token([(b"Authorization", b"bearer  abc ")]) == "abc"
    assert auth.bearer_token([(b"authorization", b"Basic abc")]) is None
    assert auth.bearer_token([]) is None


def test_the_key_stays_out_of_logged_and_saved_configs(tmp_path):
    import copy
    import io

    from swift_cispo.trainers import GRPOConfig

    config = GRPOConfig(output_dir=str(tmp_path), vllm_server_api_key=KEY, report_to="none")
    assert config.to_dict()["vllm_server_api_key"] == "<VLLM_SERVER_API_KEY>"
    saved = io.BytesIO()
    torch.save(config, saved)  # what transformers writes as training_args.bin
    assert KEY.encode() not in saved.getvalue()
    assert copy.deepcopy(config).vllm_server_api_key == KEY  # an in-memory copy still has it


@pytest.mark.slow
def test_key_file_flags_are_checked_before_anything_starts(tmp_path, tiny_model_dir):
    missing = tmp_path / "no.key"
    assert_clean_error(
        swift("rollout", "--model", tiny_model_dir, "--port", _free_port(), "--api_key_file", missing, cwd=tmp_path),
        f"--api_key_file {missing} cannot be read",
    )
    assert_clean_error(
        swift("rlhf", "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_api_key_file", missing,
              "--output_dir", tmp_path / "o", cwd=tmp_path),  # fmt: skip
        f"--vllm_server_api_key_file {missing} cannot be read (No such file or directory)",
    )
    assert not (tmp_path / "o").exists()


def test_a_server_that_stops_removes_the_key_it_generated(tmp_path, monkeypatch, capsys):
    """The generated key lives as long as its server: here the start fails after the key was written
    (tensor parallelism on a CPU machine), and the file is gone when `swift rollout` returns."""
    from helpers import REPO, swift_in_process

    from swift_cispo.distributed.launch import free_port

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(auth.API_KEY_ENV, raising=False)
    port = free_port()
    written = []
    original = auth.write_key_file
    monkeypatch.setattr(auth, "write_key_file", lambda path, key: written.append(path) or original(path, key))
    result = swift_in_process("rollout", "--model", REPO / "swift_cispo" / "demo" / "model", "--port", port, "--vllm_tensor_parallel_size", "2",
                              capsys=capsys)  # fmt: skip
    assert result.returncode == 2 and "--vllm_tensor_parallel_size > 1 needs GPUs" in result.stderr, result.stderr[-2000:]
    assert written == [auth.default_key_file(port)]  # it was written ...
    assert not written[0].exists()  # ... and removed
