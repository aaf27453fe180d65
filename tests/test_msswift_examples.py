"""ms-swift's own GRPO example command lines (vendored verbatim) run here with only model and dataset swapped."""

import subprocess
import sys

import pytest

from helpers import REPO, override_flags, without_flags

import msswift_examples  # scripts/msswift_examples.py (helpers puts scripts/ on the path)


def test_the_vendored_scripts_hold_37_command_lines():
    scripts = sorted(msswift_examples.FIXTURES.glob("*.sh"))
    assert len(scripts) == 36
    assert sum(len(msswift_examples.command_lines(p)) for p in scripts) == 37
    for script in scripts:
        assert script.read_text().startswith("# Vendored verbatim from modelscope/ms-swift")


def test_a_hash_inside_a_value_is_not_a_comment():
    """'NuminaMath-TIR#10000' samples rows; the flags after it belong to the command."""
    argv = msswift_examples.command_lines(msswift_examples.FIXTURES / "internal__gspo.sh")[0]
    assert argv[argv.index("--dataset") + 1] == "AI-MO/NuminaMath-TIR#10000"
    assert argv[-4:] == ["--deepspeed", "zero3", "--log_completions", "true"]


def test_flags_are_replaced_not_repeated():
    argv = ["--model", "M", "--dataset", "a", "b", "--max_steps", "9", "--beta", "0"]
    assert without_flags(argv, ["dataset", "beta"]) == ["--model", "M", "--max_steps", "9"]
    assert override_flags(argv, ["--max_steps", "2", "--dataset", "D"]) == ["--model", "M", "--beta", "0", "--max_steps", "2", "--dataset", "D"]


def test_swap_replaces_every_dataset_value():
    argv = ["--model", "Qwen/x", "--dataset", "a", "b", "--beta", "0"]
    assert msswift_examples.swap_model_and_dataset(argv, "M", "D") == ["--model", "M", "--dataset", "D", "--beta", "0"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, expected",
    [("internal__transformers", "trained"), ("internal__chord", "refused"), ("internal__qlora", "refused")],
)
def test_example_trains_or_is_refused_with_its_reason(script, expected, tiny_model_dir):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "msswift_examples.py"), "--model", str(tiny_model_dir), "--only", script],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    ).stdout
    row = next(line for line in out.splitlines() if script in line)
    assert row.startswith(expected), row
    if expected == "refused":
        assert "not supported here" in row or "not built yet" in row, row


def test_placeholders_are_recognised():
    assert msswift_examples.placeholder(["--vllm_server_host", "xxx"]) == "xxx"
    assert msswift_examples.placeholder(["--vllm_server_host", "<node1_ip>", "<node2_ip>"]) == "<node1_ip>"
    assert msswift_examples.placeholder(["--vllm_server_host", "127.0.0.1", "--system", "prompt.txt"]) is None


def test_one_process_keeps_the_scripts_rollout_batch():
    argv = ["--per_device_train_batch_size", "2", "--num_generations", "8"]
    assert msswift_examples.with_processes(argv, 6, 1)[1] == "12"  # 2 x 6 processes, as grpo_7b.sh generates
    assert msswift_examples.with_processes(argv, 6, 6) == argv
    assert msswift_examples.script_nproc(msswift_examples.FIXTURES / "external__grpo_7b.sh") == 6


def test_each_scripts_rollout_server_command_is_found_and_parses():
    """The `swift rollout` command a server-mode script asks to start first (in a comment, mostly) is found, and
    every flag ms-swift's examples give it parses here (tensor parallelism is refused later, on a CPU)."""
    from swift_cispo.cli import rollout

    gym = msswift_examples.rollout_command(msswift_examples.FIXTURES / "external__vllm_gym.sh")
    assert gym == ["--model", "Qwen/Qwen2.5-3B-Instruct", "--max_turns", "3", "--multi_turn_scheduler", "gym_scheduler",
                   "--use_gym_env", "true", "--gym_env", "math_env"]  # fmt: skip
    assert msswift_examples.rollout_command(msswift_examples.FIXTURES / "internal__transformers.sh") is None
    found = 0
    for script in sorted(msswift_examples.FIXTURES.glob("*.sh")):
        argv = msswift_examples.rollout_command(script)
        if argv is None or msswift_examples.placeholder(argv):
            continue
        parsed = rollout.parse(msswift_examples.swap_model_and_dataset(argv, "some/model", ""))
        assert parsed.model == "some/model"
        found += 1
    assert found == 14
