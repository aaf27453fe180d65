"""Scale-out through the CLI, with the real components: ``NPROC_PER_NODE=2 swift rlhf`` relaunching itself
under torch's launcher (2 processes on gloo), DeepSpeed ZeRO-2/3, LoRA alone and under ZeRO, ``swift
export --merge_lora``, and checkpoints that resume to the same weights in each of these modes.

Resume check: a run trains 2 steps and saves after each; a second run starts from a copy of its
``checkpoint-1`` and trains step 2 again. Same seed, same data order, same rollout RNG (restored per
process): the two step-2 models must be the same to float32 rounding, and a resumed run that silently
restarted from step 0 (or from fresh optimizer state) would be far off.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import (
    FAST, LAUNCH_VARIABLES, REPO, assert_clean_error, assert_resumed_equal, override_flags, read_metrics, swift, swift_in_process,
)

DEMO_MODEL = REPO / "swift_cispo" / "demo" / "model"
# The demo's steps_per_generation is 2: checkpoint-1 falls inside a rollout window, so the resumed step 2
# must train on the second half of the rollout each process saved with the checkpoint.
RUN = override_flags(FAST, ["--save_steps", "1", "--seed", "7", "--warmup_steps", "0", "--learning_rate", "1e-2"])


def _train_then_resume(tmp_path: Path, flags: list[str], **env: str) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """An uninterrupted 2-step run and a run resumed from a copy of its step-1 checkpoint."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run = override_flags(RUN, flags)
    first = swift("rlhf", *run, "--output_dir", full, cwd=tmp_path, timeout=600, **env)
    assert first.returncode == 0, first.stderr[-4000:]
    assert (full / "checkpoint-1" / "trainer_state.json").is_file() and (full / "checkpoint-2").is_dir()
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-1", resumed / "checkpoint-1")
    second = swift("rlhf", *run, "--resume_from_checkpoint", resumed / "checkpoint-1", cwd=tmp_path, timeout=600, **env)
    assert second.returncode == 0, second.stderr[-4000:]
    return full, resumed, first


# ------------------------------------------------------------------------------------------- ZeRO
# ZeRO-3 resumes through examples/scripts/cispo_multi_node.sh, launched as two nodes of one process each:
# tests/test_examples.py::test_multi_node_example_smoke_two_launchers_one_zero3_run_that_resumes_exactly.
@pytest.mark.slow
@pytest.mark.distributed
def test_zero2_two_processes_train_save_and_resume_exactly(tmp_path):
    full, resumed, first = _train_then_resume(tmp_path, ["--deepspeed", "zero2"], NPROC_PER_NODE="2")
    assert "starting 2 processes on this node" in first.stderr
    assert first.stderr.count("training Qwen2ForCausalLM") == 1, "only process 0 should narrate"
    # DeepSpeed's own sharded state is in the checkpoint (what resume loads), one optimizer shard per process
    shards = sorted(p.name for p in (full / "checkpoint-1" / "global_step1").iterdir() if "optim_states" in p.name)
    assert len(shards) == 2, shards
    # the saved model is whole and loads with transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(full)
    reference = AutoModelForCausalLM.from_pretrained(DEMO_MODEL)
    assert model.model.embed_tokens.weight.shape == reference.model.embed_tokens.weight.shape
    assert_resumed_equal(full, resumed, "model.safetensors")


# ------------------------------------------------------------------------------------------- LoRA
def _adapter_config(path: Path) -> dict:
    return json.loads((path / "adapter_config.json").read_text())


@pytest.mark.slow
def test_lora_trains_only_the_adapter_resumes_and_merges(tmp_path):
    flags = ["--train_type", "lora", "--lora_rank", "4", "--lora_alpha", "8", "--learning_rate", "2e-2"]
    full, resumed, _ = _train_then_resume(tmp_path, flags)
    config = _adapter_config(full)
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    # all-linear: the 7 projections of each of the 2 layers, not the output head
    assert len(config["target_modules"]) == 7 * 2 and not any("lm_head" in m for m in config["target_modules"])
    assert not (full / "model.safetensors").exists(), "LoRA saves the adapter, not a full copy of the model"
    assert_resumed_equal(full, resumed, "adapter_model.safetensors")

    result = swift("export", "--adapters", full, "--merge_lora", "true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    merged_dir = Path(f"{full}-merged")
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids = tokenizer(["1+2=", "17+25="], return_tensors="pt", padding=True)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(DEMO_MODEL).eval()
    with torch.no_grad():
        base_logits = base(**ids).logits
        adapted = PeftModel.from_pretrained(base, str(full)).eval()
        adapted_logits = adapted(**ids).logits
        merged_logits = merged(**ids).logits
    assert float((adapted_logits - base_logits).abs().max()) > 1e-3, "the trained adapter changes nothing"
    assert torch.allclose(merged_logits, adapted_logits, atol=1e-5), float((merged_logits - adapted_logits).abs().max())

    # the merged folder is never written over
    again = swift("export", "--adapters", full, "--merge_lora", "true", cwd=tmp_path)
    assert_clean_error(again, "already exists and is not empty")


@pytest.mark.slow
@pytest.mark.distributed
def test_lora_with_zero3_two_processes_trains_and_resumes(tmp_path):
    flags = ["--train_type", "lora", "--learning_rate", "2e-2", "--deepspeed", "zero3"]
    full, resumed, _ = _train_then_resume(tmp_path, flags, NPROC_PER_NODE="2")
    assert _adapter_config(full)["r"] == 8  # the default rank
    assert_resumed_equal(full, resumed, "adapter_model.safetensors")


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "env,fragment",
    [
        ({"NPROC_PER_NODE": "two"}, "NPROC_PER_NODE='two' must be a whole number >= 1"),
        ({"NPROC_PER_NODE": "0"}, "NPROC_PER_NODE='0' must be a whole number >= 1"),
        ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "10.0.0.1"}, "NODE_RANK='2' must be a whole number from 0 to NNODES-1 (1)"),
        ({"NNODES": "2", "NODE_RANK": "0"}, "NNODES=2 needs MASTER_ADDR"),
        ({"NPROC_PER_NODE": "2", "MASTER_PORT": "70000"}, "MASTER_PORT='70000' must be a port number"),
    ],
)
def test_launch_environment_mistakes(env, fragment):
    from swift_cispo.distributed.launch import launch_plan
    from swift_cispo.errors import UserError

    with pytest.raises(UserError, match=".*") as caught:
        launch_plan(env)
    assert fragment in str(caught.value)


def test_launch_plan_from_the_environment():
    from swift_cispo.distributed.launch import launch_plan, torchrun_arguments

    assert launch_plan({}) is None  # no variables, no DeepSpeed: train in this process
    assert launch_plan({"LOCAL_RANK": "0", "WORLD_SIZE": "2", "NPROC_PER_NODE": "2"}) is None  # already a worker
    single = launch_plan({}, needs_launcher=True)  # DeepSpeed needs torchrun's rank variables even for 1 process
    assert (single.nproc_per_node, single.nnodes, single.master_addr) == (1, 1, "127.0.0.1")
    plan = launch_plan({"NPROC_PER_NODE": "8", "NNODES": "4", "NODE_RANK": "3", "MASTER_ADDR": "10.0.0.1"})
    assert (plan.world_size, plan.master_port) == (32, 29500)  # every node must agree on the port
    command = torchrun_arguments(plan, "rlhf", ["--deepspeed", "zero3"])
    assert command[:10] == ["--nproc_per_node", "8", "--nnodes", "4", "--node_rank", "3", "--master_addr", "10.0.0.1", "--master_port", "29500"]
    assert command[10:] == ["-m", "swift_cispo.cli.main", "rlhf", "--deepspeed", "zero3"]


def test_deepspeed_configs(tmp_path):
    from swift_cispo.distributed import BUILTIN_DEEPSPEED, resolve_deepspeed_config

    def zero_stage(config: dict) -> int:
        return config["zero_optimization"]["stage"]

    stages = {name: zero_stage(resolve_deepspeed_config(name)) for name in BUILTIN_DEEPSPEED}
    assert stages == {"zero0": 0, "zero1": 1, "zero2": 2, "zero3": 3, "zero2_offload": 2, "zero3_offload": 3}
    offload = resolve_deepspeed_config("zero3_offload")["zero_optimization"]
    assert offload["offload_optimizer"]["device"] == offload["offload_param"]["device"] == "cpu"
    # batch sizes are left to the trainer's flags
    assert resolve_deepspeed_config("zero2")["train_micro_batch_size_per_gpu"] == "auto"
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert zero_stage(resolve_deepspeed_config(str(own))) == 1
    for text, message in [("{'zero", "is not valid JSON"), ("[1]", "must hold a JSON object"), ('{"zero_optimization": {"stage": 4}}', "stage must be 0, 1, 2 or 3")]:
        own.write_text(text)
        with pytest.raises(ValueError, match=".*") as caught:
            resolve_deepspeed_config(str(own))
        assert message in str(caught.value)


def test_lora_options():
    from swift_cispo.cli.args import ModelArguments
    from swift_cispo.cli.model import lora_config
    from swift_cispo.errors import UserError

    assert lora_config(ModelArguments(model="m")) is None
    config = lora_config(ModelArguments(model="m", train_type="lora", lora_rank=16, lora_alpha=64, lora_dropout=0.1))
    assert (config.r, config.lora_alpha, config.lora_dropout, config.target_modules) == (16, 64, 0.1, "all-linear")
    assert lora_config(ModelArguments(model="m", train_type="lora", target_modules=["q_proj", "v_proj"])).target_modules == {"q_proj", "v_proj"}
    from swift_cispo.cli.ranges import check_ranges

    for bad, message in [({"lora_rank": 0}, "--lora_rank 0 is out of range; allowed: a whole number >= 1"),
                         ({"lora_alpha": 0}, "--lora_alpha 0 is out of range; allowed: > 0"),
                         ({"lora_dropout": 1.5}, "--lora_dropout 1.5 is out of range; allowed: in [0, 1)")]:
        with pytest.raises(UserError) as caught:
            check_ranges(ModelArguments(model="m", train_type="lora", **bad))
        assert str(caught.value) == message


@pytest.mark.parametrize(
    "flags,env,fragments",
    [
        (["--deepspeed", "ds_zero9.json"], {}, ["--deepspeed ds_zero9.json: not a file and not a built-in config", "zero2, zero3"]),
        (["--train_type", "qlora"], {}, ["--train_type qlora is not supported; use --train_type full or lora"]),
        # a mistake every worker would make is caught by the launcher, once, before any process starts
        (["--epsilon_high", "-1"], {"NPROC_PER_NODE": "2"}, ["epsilon_high must be > 0"]),
    ],
)
def test_scale_out_mistakes_are_one_sentence(tmp_path, monkeypatch, capsys, flags, env, fragments):
    """In this process (``main``, as a user's command runs it): refused before any worker could start."""
    monkeypatch.chdir(tmp_path)
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    result = swift_in_process("rlhf", *flags, "--output_dir", out, capsys=capsys)
    assert_clean_error(result, *fragments)
    assert "starting" not in result.stderr, "workers were started for a command that cannot run"
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
@pytest.mark.distributed
def test_a_worker_failure_is_reported_with_its_status(tmp_path):
    """A mistake only the workers can see (a dataset row) stops the run with the worker's exit status."""
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"answer": "3"}\n')
    result = swift(
        "rlhf", "--model", DEMO_MODEL, "--dataset", data, "--reward_funcs", "exact_match", "--output_dir", tmp_path / "out",
        *FAST, cwd=tmp_path, NPROC_PER_NODE="2",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr, result.stderr[-3000:]
    assert "bad.jsonl row 2 has an empty prompt" in result.stderr
    assert "exited with status 2" in result.stderr


@pytest.mark.slow
def test_export_mistakes(tmp_path):
    from swift_cispo.cli import export
    from swift_cispo.errors import UserError

    for argv, message in [
        (["--adapters", str(tmp_path), "--merge_lora", "true"], "holds no adapter_config.json"),
        (["--adapters", str(tmp_path)], "add --merge_lora true"),
        (["--merge_lora", "true"], "--adapters is required"),
    ]:
        with pytest.raises(UserError, match=".*") as caught:
            export.run(argv)
        assert message in str(caught.value)
    assert_clean_error(swift("export", "--adapters", tmp_path, "--merge_lora", "true", cwd=tmp_path), "holds no adapter_config.json")


@pytest.mark.slow
@pytest.mark.distributed
def test_the_launcher_checks_the_config_for_the_world_it_starts(tmp_path, monkeypatch, capsys, tiny_model_dir, data_file):
    """4 rows x 1 step per process, 8 generations: one process could not form a group, two can. The launcher
    must check the config its 2 workers build (ms-swift's grpo_7b.sh was refused for this), and train."""
    result = swift(
        "rlhf", "--model", tiny_model_dir, "--dataset", data_file, "--reward_funcs", "exact_match",
        "--per_device_train_batch_size", "4", "--num_generations", "8", "--steps_per_generation", "1",
        "--max_steps", "1", "--max_completion_length", "4", "--output_dir", tmp_path / "out",
        cwd=tmp_path, NPROC_PER_NODE="2", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    monkeypatch.chdir(tmp_path)
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    single = swift_in_process(  # one process, refused before anything loads: in this process
        "rlhf", "--model", tiny_model_dir, "--dataset", data_file, "--reward_funcs", "exact_match",
        "--per_device_train_batch_size", "4", "--num_generations", "8", "--steps_per_generation", "1",
        "--output_dir", tmp_path / "single", capsys=capsys,
    )  # fmt: skip
    assert_clean_error(single, "generation_batch_size (4) must be divisible by num_generations (8)")


HALF_FLAT_PLUGIN = '''
from swift_cispo.rewards import ORM, orms


class HalfFlat(ORM):
    """Prompts starting with 0 or 1 reward every completion alike (a flat group); the others reward length."""

    def __call__(self, completions, prompts=None, **kwargs):
        return [1.0 if str(p).startswith(("0", "1")) else len(c) + 0.01 * i for i, (p, c) in enumerate(zip(prompts, completions))]


orms["half_flat"] = HalfFlat
'''


@pytest.mark.slow
@pytest.mark.distributed
def test_dynamic_sampling_with_two_processes(tmp_path, tiny_model_dir, data_file):
    """Each process replaces its own flat groups; every round is taken by both (the rewards are gathered)."""
    plugin = tmp_path / "half_flat.py"
    plugin.write_text(HALF_FLAT_PLUGIN)
    out = tmp_path / "out"
    result = swift(
        "rlhf", "--model", tiny_model_dir, "--dataset", data_file, "--reward_funcs", "half_flat", "--external_plugins", plugin,
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--steps_per_generation", "2",
        "--max_steps", "2", "--max_completion_length", "4", "--temperature", "1.5", "--logging_steps", "1",
        "--dynamic_sample", "true", "--max_resample_times", "8", "--seed", "3", "--output_dir", out,
        cwd=tmp_path, NPROC_PER_NODE="2", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [m for m in read_metrics(out) if "dynamic_sampling/flat_groups" in m]
    assert logged, "no generation batch logged its dynamic-sampling counts"
    found = sum(m["dynamic_sampling/flat_groups"] for m in logged)
    replaced = sum(m["dynamic_sampling/replaced_groups"] for m in logged)
    assert found >= 1, logged  # half of the 16 prompts give flat groups
    # both processes took part in every round and put informative groups in place of flat ones
    assert 1 <= replaced <= found, logged
    assert all(1 <= m["dynamic_sampling/rounds"] <= 8 for m in logged), logged
