"""``swift rlhf``: real training on a tiny model (subprocesses), configs, plugins, and bad input (in-process,
through ``swift_cispo.cli.main.main``, with one subprocess case for "no traceback")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import FAST, LAUNCH_VARIABLES, REPO, assert_clean_error, read_metrics, swift, swift_in_process

# --------------------------------------------------------------------------- training runs
# A plugin reward with the CISPO loss, its metrics, curves and saved model: examples/scripts/cispo_custom_reward.sh
# (tests/test_examples.py); two weighted reward functions: cispo_math_accuracy_format.sh.
@pytest.mark.slow
def test_yaml_config_with_command_line_override_and_a_prompt_longer_than_the_context(tmp_path, tiny_model_dir, data_file):
    """One run for two things. The config file's values are used, the command line's override them. And a
    50,000-character prompt with a 64-position model: without --max_length the model's context minus the
    completion length is the limit, so the run trains (the prompt left-truncated, the count logged)."""
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=" * 12500, "answer": "2"}) + "\n" + data_file.read_text())
    config = tmp_path / "cispo.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\n"
        f"dataset: [{data}]\n"
        "reward_funcs: [exact_match]\n"
        "loss_type: cispo\n"
        "epsilon_high: 4.0\n"
        "max_steps: 3\n"
        "num_generations: 4\n"
        "per_device_train_batch_size: 8\n"
        "max_completion_length: 4\n"
        "logging_steps: 1\n"
        "gradient_checkpointing: false\n"
    )
    out = tmp_path / "yaml_run"
    result = swift("rlhf", config, "--max_steps", "2", "--output_dir", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == [1, 2]  # the command line won
    assert "epsilon_high=4:" in result.stderr  # the file's value was used
    assert "left-truncated 1 prompts longer than the model's context (64) minus --max_completion_length (4), 60 tokens" in result.stderr

    # the same file given as --config: its values, with no command-line override (parsed only; the run above trained)
    from swift_cispo.cli.rlhf import parse

    model_args, data_args, rlhf_args, train_args, demo = parse(["--config", str(config), "--output_dir", str(tmp_path / "config_flag_run")])
    assert (train_args.max_steps, train_args.epsilon_high, model_args.model, demo) == (3, 4.0, str(tiny_model_dir), False)
    assert data_args.dataset == [str(data)] and rlhf_args.reward_funcs == ["exact_match"]


@pytest.mark.slow
def test_messages_dataset_with_system_prompt_and_custom_loss_plugin(tmp_path, tiny_model_dir):
    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"{a}+{a}="}, {"role": "assistant", "content": str(2 * a)}], "answer": str(2 * a)}
        for a in range(8)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plugin = tmp_path / "loss_plugin.py"
    plugin.write_text(
        "from swift_cispo import LossOutput, register_loss\n"
        "\n"
        "@register_loss('plain_reinforce', reduction='global_token_mean')\n"
        "def plain_reinforce(log_probs, old_log_probs, advantages, mask, config):\n"
        "    return LossOutput(per_token_loss=-advantages * log_probs)\n"
    )
    out = tmp_path / "chat_run"
    result = swift(
        "rlhf", "--model", tiny_model_dir, "--dataset", data, "--system", "Add.", "--reward_funcs", "exact_match",
        "--external_plugins", plugin, "--loss_type", "plain_reinforce", "--output_dir", out, *FAST, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loss_type=plain_reinforce" in result.stderr
    assert len([m for m in read_metrics(out) if "loss" in m]) == 2


# --------------------------------------------------------------------------- bad input
@pytest.fixture
def swift_here(tmp_path, monkeypatch, capsys):
    """``swift ARGS`` in this process, run from ``tmp_path``: (exit code, stdout, stderr) as a CompletedProcess."""
    monkeypatch.chdir(tmp_path)
    return lambda *args: swift_in_process(*args, capsys=capsys)


def test_unknown_subcommand(swift_here):
    assert_clean_error(swift_here("train"), "unknown subcommand 'train'", "available: rlhf")


def test_unknown_flag_suggests_the_right_one(swift_here):
    assert_clean_error(swift_here("rlhf", "--epsilon_hihg", "5"), "unknown flag --epsilon_hihg", "--epsilon_high")


def test_help_lists_the_flags(swift_here):
    result = swift_here("rlhf", "--help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: swift rlhf") and "--epsilon_high EPSILON_HIGH" in result.stdout


@pytest.mark.parametrize(
    "error,code",
    [("UserError", 2), ("NonFiniteError", 2), ("RolloutServerError", 1)],
)
def test_reported_errors_exit_with_their_code(swift_here, monkeypatch, error, code):
    """Every ReportedError is one sentence and its exit code: bad input 2, a non-finite step 2, a failing server 1."""
    from swift_cispo import errors
    from swift_cispo.cli import rlhf
    from swift_cispo.generation.client import RolloutServerError

    kind = RolloutServerError if error == "RolloutServerError" else getattr(errors, error)

    def fail(argv):
        raise kind("something named went wrong; here is what to do")

    monkeypatch.setattr(rlhf, "run", fail)
    result = swift_here("rlhf")
    assert result.returncode == code
    assert result.stderr == "swift rlhf: error: something named went wrong; here is what to do\n"


@pytest.mark.parametrize(
    "flags,fragments",
    [
        (["--epsilon_high", "-1"], ["epsilon_high must be > 0"]),
        (["--loss_type", "ppo"], ["unknown loss_type 'ppo'", "bnpo, cispo, dapo, dr_grpo, grpo"]),
        (["--reward_funcs", "acuracy"], ["unknown reward function 'acuracy'", "did you mean 'accuracy'?", "available: accuracy, cosine"]),
        (["--reward_funcs", "soft_overlong"], ["the soft_overlong reward needs --soft_cache_length"]),
        (["--reward_funcs", "format", "--format_pattern", "(<think>"], ["--format_pattern '(<think>' is not a valid regular expression"]),
        (["--columns", "question=prompt"], ["--columns must be a JSON object of old -> new column names"]),
        (["--columns", '{"questoin": "prompt"}'], ["--columns renames 'questoin', which no dataset has", "answer, prompt"]),
        (["--split_dataset_ratio", "1.5"], ["--split_dataset_ratio 1.5 is out of range; allowed: in [0, 1)"]),
        (["--num_generations", "1", "--per_device_train_batch_size", "4"], ["--num_generations 1 is out of range; allowed: a whole number >= 2"]),
        (["--num_generations", "two"], ["--num_generations", "invalid int value"]),
        (["--external_plugins", "missing_plugin.py"], ["plugin file missing_plugin.py does not exist"]),
        (["--rlhf_type", "dpo"], ["--rlhf_type", "invalid choice"]),
        # a run that would train nothing (data_file has 16 prompts): an error, not exit 0 with the base model saved
        (["--per_device_train_batch_size", "32", "--num_generations", "2", "--steps_per_generation", "2"],
         ["the dataset has 16 prompts, fewer than the 32 one generation batch takes", "lower --per_device_train_batch_size"]),
        (["--num_train_epochs", "0"], ["--num_train_epochs 0.0 is out of range; allowed: > 0"]),
        (["--max_steps", "0"], ["--max_steps 0 is out of range; allowed: a whole number >= 1, or -1"]),
        (["--num_iterations", "0"], ["--num_iterations 0 is out of range; allowed: a whole number >= 1"]),
        # every numeric flag has its range (swift_cispo/cli/ranges.py), checked before anything loads
        (["--learning_rate", "-1"], ["--learning_rate -1.0 is out of range; allowed: > 0"]),
        (["--max_completion_length", "0"], ["--max_completion_length 0 is out of range; allowed: a whole number >= 1"]),
        (["--temperature", "0"], ["--temperature 0.0 is out of range; allowed: > 0"]),
        (["--temperature", "-1"], ["--temperature -1.0 is out of range; allowed: > 0"]),
        (["--steps_per_generation", "0"], ["--steps_per_generation 0 is out of range"]),
        (["--per_device_train_batch_size", "0"], ["--per_device_train_batch_size 0 is out of range"]),
        (["--beta", "-1"], ["--beta -1.0 is out of range; allowed: >= 0"]),
        (["--save_steps", "0"], ["--save_steps 0.0 is out of range; allowed: > 0"]),
        (["--epsilon_high", "nan"], ["--epsilon_high nan is out of range; allowed: finite"]),
        (["--reward_weights", "1", "inf"], ["--reward_weights inf is out of range; allowed: finite"]),
        (["--loss_type", "cispo", "--epsilon_high", "5", "--loss_type", "grpo"], ["--loss_type is given twice, as cispo and as grpo; give it once"]),
        (["--epsilon_high", "inf"], ["--epsilon_high inf is out of range; allowed: finite"]),
    ],
)
def test_bad_values_end_in_one_sentence(swift_here, tmp_path, tiny_model_dir, data_file, flags, fragments):
    base = ["--model", tiny_model_dir, "--dataset", data_file, "--output_dir", tmp_path / "never"]
    if "--reward_funcs" not in flags:
        base += ["--reward_funcs", "exact_match"]
    assert_clean_error(swift_here("rlhf", *base, *flags), *fragments)
    assert not (tmp_path / "never").exists()  # nothing was left behind


def test_plugin_with_a_syntax_error(swift_here, tmp_path, tiny_model_dir, data_file):
    plugin = tmp_path / "broken.py"
    plugin.write_text("def reward(:\n    pass\n")
    result = swift_here("rlhf", "--model", tiny_model_dir, "--dataset", data_file, "--external_plugins", plugin)
    assert_clean_error(result, f"plugin file {plugin} has a syntax error at line 1")


def test_missing_and_unparseable_datasets(swift_here, tmp_path, tiny_model_dir):
    common = ["--model", tiny_model_dir, "--reward_funcs", "exact_match", "--output_dir", tmp_path / "o"]
    assert_clean_error(swift_here("rlhf", *common, "--dataset", "nowhere.jsonl"), "dataset nowhere.jsonl does not exist")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": \n')
    assert_clean_error(swift_here("rlhf", *common, "--dataset", bad), f"dataset {bad} line 2 is not valid JSON")
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("text,answer\n1+1=,2\n")  # 'question' would be the prompt, as ms-swift maps it
    assert_clean_error(
        swift_here("rlhf", *common, "--dataset", nocol), "neither a 'prompt' nor a 'messages' column", "text, answer"
    )
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_clean_error(swift_here("rlhf", *common, "--dataset", text), "unsupported extension '.txt'")


def test_bad_rows_name_the_file_and_the_row(swift_here, tmp_path, tiny_model_dir):
    common = ["--model", tiny_model_dir, "--reward_funcs", "exact_match", "--output_dir", tmp_path / "o"]
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt,answer\n1+1=,2\n2+2=,4\n,6\n")  # the third row has no prompt
    assert_clean_error(swift_here("rlhf", *common, "--dataset", f"{csv}#2"), f"dataset {csv} row 3 has an empty prompt")
    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"messages": [{"role": "user", "content": "1+1="}]}\n{"messages": "not a conversation"}\n')
    assert_clean_error(
        swift_here("rlhf", *common, "--dataset", chat),
        f"dataset {chat} row 2: 'messages' must be a list of {{role, content}} messages, got str",
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_columns_remapping_and_evaluation_on_a_held_out_split(tmp_path, tiny_model_dir):
    data = tmp_path / "renamed.parquet"
    import pandas as pd

    pd.DataFrame({"question": [f"{a}+{b}=" for a in range(5) for b in range(4)], "solution": [str(a + b) for a in range(5) for b in range(4)]}).to_parquet(data)
    config = tmp_path / "eval.yaml"
    config.write_text("columns: {question: prompt, solution: answer}\nsplit_dataset_ratio: 0.2\neval_steps: 1\n")
    out = tmp_path / "eval_run"
    result = swift(
        "rlhf", config, "--model", tiny_model_dir, "--dataset", data, "--reward_funcs", "accuracy", "exact_match",
        "--per_device_eval_batch_size", "8", "--output_dir", out, *FAST, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "holding out 4 of 20 rows for evaluation every 1 steps" in result.stderr
    metrics = read_metrics(out)
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_reward" in m]
    assert [m["step"] for m in train] == [1, 2] and [m["step"] for m in evals] == [1, 2]
    assert all("eval_rewards/accuracy/mean" in m for m in evals) and all("rewards/accuracy/mean" in m for m in train)


def test_missing_model_path(swift_here, data_file):
    result = swift_here("rlhf", "--model", "./no_such_model", "--dataset", data_file, "--reward_funcs", "exact_match")
    assert_clean_error(result, "model path ./no_such_model does not exist")


def test_existing_output_dir_is_never_overwritten(swift_here, tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "earlier_run"
    out.mkdir()
    (out / "model.safetensors").write_text("precious")
    result = swift_here(
        "rlhf", "--model", tiny_model_dir, "--dataset", data_file, "--reward_funcs", "exact_match", "--output_dir", out, *FAST
    )
    assert_clean_error(result, f"output_dir {out} already exists and is not empty")
    assert (out / "model.safetensors").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]


@pytest.mark.slow
def test_a_refused_run_prints_one_sentence_and_no_traceback(tmp_path, tiny_model_dir):
    """The in-process cases above check the sentence and the exit code; this one, the process a user sees."""
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt,answer\n1+1=,2\n,4\n")
    result = swift("rlhf", "--model", tiny_model_dir, "--dataset", csv, "--reward_funcs", "exact_match", "--output_dir", tmp_path / "o", cwd=tmp_path)
    assert result.stdout == ""
    # no traceback, one error line, and it is the last thing printed
    assert result.stderr.strip().splitlines()[-1] == assert_clean_error(result, f"dataset {csv} row 2 has an empty prompt")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_bad_reward_output_is_reported_with_the_function_name(swift_here, tmp_path, tiny_model_dir, data_file):
    plugin = tmp_path / "bad_reward.py"
    plugin.write_text(
        "from swift_cispo.rewards import ORM, orms\n"
        "class Wordy(ORM):\n"
        "    def __call__(self, completions, **kwargs):\n"
        "        return ['good'] * len(completions)\n"
        "orms['wordy'] = Wordy\n"
    )
    result = swift_here(
        "rlhf", "--model", tiny_model_dir, "--dataset", data_file, "--external_plugins", plugin,
        "--reward_funcs", "wordy", "--output_dir", tmp_path / "o", *FAST,
    )  # fmt: skip
    assert_clean_error(result, "reward function 'wordy' returned str 'good' for completion 0")


@pytest.mark.slow
def test_wrong_flag_help_and_unknown_subcommand_import_neither_trl_nor_vllm(tmp_path):
    """The answers that need no training load no TRL and no vLLM (TRL's config alone takes seconds)."""
    script = (
        "import contextlib, io, sys\n"
        "from swift_cispo.cli.main import main\n"
        "def heavy():\n"
        "    return sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'vllm'))\n"
        "for argv in (['rlhf', '--no_such_flag', '1'], ['rlhf', '--help'], ['no_such_subcommand']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            code = main(argv)\n"
        "        except SystemExit as exit:\n"
        "            code = exit.code\n"
        "    print(' '.join(argv), code, heavy()[:3])\n"
        "print('swift_cispo.trainers.grpo_trainer' in sys.modules, 'trl.trainer.grpo_trainer' in sys.modules,\n"
        "      'trl.generation' in sys.modules, 'vllm' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "rlhf --no_such_flag 1 2 []",
        "rlhf --help 0 []",
        "no_such_subcommand 2 []",
        "False False False False",
    ], result.stdout


def test_an_empty_dataset_and_a_list_for_a_number_are_named(swift_here, tmp_path, tiny_model_dir, data_file):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    common = ["--model", tiny_model_dir, "--reward_funcs", "exact_match", "--output_dir", tmp_path / "o"]
    assert_clean_error(swift_here("rlhf", *common, "--dataset", empty), f"dataset {empty} is empty; it needs rows with a 'prompt'")
    config = tmp_path / "cfg.json"
    config.write_text('{"epsilon_high": [0.2, 0.3]}')
    assert_clean_error(
        swift_here("rlhf", config, *common, "--dataset", data_file),
        "--epsilon_high takes one value but got 2 (0.2 0.3); in a config file, give it a single value, not a list",
    )
    assert not (tmp_path / "o").exists()
