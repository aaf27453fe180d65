"""Reliability and observability: exact resume, kill -9, metrics/curves/completions files, progress,
faults (raising or NaN rewards, NaN losses), --report_to, and the security defaults.

The resume tests share two runs of the embedded demo (module fixture ``runs``): one uninterrupted,
one SIGKILLed mid-step after four checkpoints; they resume the latter, or stop a run of the same
settings at step 3 and extend it, and compare with the former.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from swift_cispo.callbacks import NonFiniteGradientGuard
from swift_cispo.cli.reporting import check_reporting
from swift_cispo.plots import curve_panels
from swift_cispo.records import COMPLETIONS_FILE, MetricsFileCallback, truncate_jsonl
from swift_cispo.checkpoints import incomplete_reason, resolve_resume, safetensors_problem
from swift_cispo.errors import NonFiniteError, UserError
from swift_cispo.trainers.run_checks import non_finite_problem
from helpers import REPO, assert_clean_error, override_flags, read_metrics, swift, swift_in_process

# The embedded demo (its own model and data, steps_per_generation 2), made small and seeded.
DEMO_FAST = [
    "--max_steps", "6",
    "--save_steps", "1",
    "--num_generations", "4",
    "--per_device_train_batch_size", "8",
    "--max_completion_length", "4",
    "--logging_steps", "1",
    "--seed", "0",
    "--log_completions", "true",
    "--lr_scheduler_type", "constant",  # a run extended to more steps then follows the same learning rates
]  # fmt: skip

# exact_match, plus a way to stall a chosen step's rollout so the test can kill the process there.
STALLING_REWARD = """
import os, time
from pathlib import Path
from swift_cispo.rewards import ExactMatch, orms

class StallingExactMatch(ExactMatch):
    def __call__(self, completions, trainer_state=None, **kwargs):
        if os.environ.get("STALL_AT_STEP") == str(trainer_state.global_step + 1):
            Path(os.environ["STALL_MARKER"]).write_text("stalled")
            time.sleep(300)
        return super().__call__(completions, **kwargs)

orms["exact_match_or_stall"] = StallingExactMatch
"""


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run_until_stalled(args: list, cwd: Path, marker: Path, env: dict) -> int:
    """Start ``swift`` with ``args``; SIGKILL it as soon as the stalling reward signals; its return code."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with (cwd / "killed_run.log").open("w") as log:
        command = [sys.executable, "-m", "swift_cispo", *map(str, args)]
        process = subprocess.Popen(command, cwd=cwd, env=full_env, stdout=log, stderr=log)
        deadline = time.monotonic() + 240
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        return process.wait(timeout=30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 6-step run, and the same run SIGKILLed during step 5 (checkpoints 1-4 saved)."""
    root = tmp_path_factory.mktemp("reliability")
    plugin = root / "stall_plugin.py"
    plugin.write_text(STALLING_REWARD)
    # tensorboard is in the test extra (setup.py); a run does not need it
    report = ["--report_to", "tensorboard"] if importlib.util.find_spec("tensorboard") else []
    common = ["rlhf", "--external_plugins", plugin, "--reward_funcs", "exact_match_or_stall", *DEMO_FAST, *report]
    full = swift(*common, "--output_dir", root / "full", cwd=root)
    assert full.returncode == 0, full.stderr[-3000:]
    marker = root / "stalled"
    code = _run_until_stalled(
        [*common, "--output_dir", root / "killed"],
        cwd=root, marker=marker, env={"STALL_AT_STEP": "5", "STALL_MARKER": str(marker)},
    )  # fmt: skip
    assert marker.exists() and code == -signal.SIGKILL, (root / "killed_run.log").read_text()[-3000:]
    return {"root": root, "common": common, "full": root / "full", "full_stderr": full.stderr, "killed": root / "killed"}


@pytest.mark.slow
# --------------------------------------------------------------------------- resume
def test_killed_run_left_complete_checkpoints_and_no_later_logs(runs):
    killed = runs["killed"]
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == [f"checkpoint-{n}" for n in (1, 2, 3, 4)]
    assert all(incomplete_reason(p) is None for p in killed.glob("checkpoint-*"))
    assert [m["step"] for m in read_metrics(killed) if "loss" in m] == [1, 2, 3, 4]
    assert not (killed / "model.safetensors").exists()  # the final save never happened
    # checkpoints are safetensors (transformers 5 always writes them), never pickled weights
    assert (killed / "checkpoint-4" / "model.safetensors").is_file() and not list(killed.rglob("pytorch_model.bin"))


@pytest.mark.slow
def test_resume_mid_window_matches_the_uninterrupted_run(runs):
    """checkpoint-3 sits inside a generation window (steps_per_generation 2): its pending rollouts are restored."""
    out = runs["root"] / "resumed_mid_window"
    shutil.copytree(runs["killed"], out)
    result = swift(*runs["common"], "--output_dir", out, "--resume_from_checkpoint", out / "checkpoint-3", cwd=runs["root"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert _max_abs_diff(_weights(out), _weights(runs["full"])) == 0.0
    # the killed run's log of step 4 was dropped and redone: every step once, with the uninterrupted run's numbers
    resumed = [(m["step"], m["loss"], m["reward"]) for m in read_metrics(out) if "loss" in m and "reward" in m]
    full = [(m["step"], m["loss"], m["reward"]) for m in read_metrics(runs["full"]) if "loss" in m and "reward" in m]
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert resumed == full
    # the same rollouts: rollouts at steps 1, 3, 5, 16 completions each, as in the uninterrupted run
    assert _rows(out / COMPLETIONS_FILE) == _rows(runs["full"] / COMPLETIONS_FILE)
    assert [r["step"] for r in _rows(out / COMPLETIONS_FILE)] == [1] * 16 + [3] * 16 + [5] * 16
    # the progress bar starts at the checkpoint's step and shows the time left
    assert " 3/6 [00:00<?, ?it/s]" in result.stderr
    assert "resuming from" in result.stderr


@pytest.mark.slow
def test_latest_skips_half_written_checkpoints(runs):
    """As if killed while saving: checkpoint-5 has a cut weights file, 4 no trainer_state.json, 3 a cut optimizer."""
    out = runs["root"] / "resumed_latest"
    shutil.copytree(runs["killed"], out)
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-5")
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    (out / "checkpoint-5" / "trainer_state.json").write_text(json.dumps({**state, "global_step": 5}))
    weights = out / "checkpoint-5" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    optimizer = out / "checkpoint-3" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])

    result = swift(*runs["common"], "--output_dir", out, "--resume_from_checkpoint", "latest", cwd=runs["root"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-2'}" in result.stderr
    assert "checkpoint-5: model.safetensors is truncated" in result.stderr
    assert "checkpoint-4: it has no trainer_state.json" in result.stderr
    assert "checkpoint-3: optimizer.pt is truncated" in result.stderr
    # checkpoint-2 ends a generation window: the RNG restored before the next rollout makes it exact too
    assert _max_abs_diff(_weights(out), _weights(runs["full"])) == 0.0


def test_resume_from_a_missing_checkpoint_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    result = swift_in_process("rlhf", "--output_dir", tmp_path / "o", "--resume_from_checkpoint", tmp_path / "o" / "checkpoint-3", capsys=capsys)
    assert_clean_error(result, f"cannot resume from {tmp_path / 'o' / 'checkpoint-3'}: it does not exist")


def test_resolve_resume_rules(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="found no complete checkpoint-N folder in .*; start a new run"):
        resolve_resume("latest", str(out))
    with pytest.raises(UserError, match="looks for the newest checkpoint in --output_dir"):
        resolve_resume("true", None)
    assert resolve_resume(None, str(out)) == (None, []) and resolve_resume("false", str(out)) == (None, [])
    (out / "checkpoint-7").mkdir(parents=True)
    (out / "checkpoint-7" / "trainer_state.json").write_text('{"global_step": 7}')
    (out / "checkpoint-7" / "model.safetensors").write_bytes(b"x")
    assert incomplete_reason(out / "checkpoint-7").startswith("it holds only the model (saved with --save_only_model)")
    with pytest.raises(UserError, match="cannot resume from .*checkpoint-7: it holds only the model"):
        resolve_resume(str(out / "checkpoint-7"), None)
    (out / "checkpoint-7" / "trainer_state.json").write_text('{"global_st')
    assert incomplete_reason(out / "checkpoint-7") == "its trainer_state.json is truncated or unreadable"


def test_safetensors_truncation_is_detected(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(100), "b": torch.zeros(3, 3)}, str(path))
    assert safetensors_problem(path) is None
    path.write_bytes(path.read_bytes()[:-4])
    assert safetensors_problem(path) == "w.safetensors is truncated"


def test_output_dir_rules(tmp_path):
    from swift_cispo.cli.outputs import resolve_output_dir

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(UserError, match=r"output_dir .*a_file/run is not writable \(Not a directory\)"):
        resolve_output_dir(str(a_file / "run"), "cispo")
    run = tmp_path / "run"
    (run / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(UserError, match="already exists and is not empty"):
        resolve_output_dir(str(run), "cispo")
    # resuming goes on in the checkpoint's own folder, its default output dir, and only there
    assert resolve_output_dir(str(run), "cispo", resume=run / "checkpoint-3") == run
    assert resolve_output_dir(None, "cispo", resume=run / "checkpoint-3") == run
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "old").mkdir(parents=True)
    with pytest.raises(UserError, match="already exists and is not empty"):
        resolve_output_dir(str(elsewhere), "cispo", resume=run / "checkpoint-3")


@pytest.mark.slow
# --------------------------------------------------------------------------- observability
def test_metrics_curves_and_completions_of_a_run(runs):
    full = runs["full"]
    metrics = read_metrics(full)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    titles = [title for title, _ in curve_panels(metrics)]
    assert titles == ["reward", "reward per function", "loss", "entropy", "clip ratios", "importance weight", "completion length"]
    png = full / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20000
    rows = _rows(full / COMPLETIONS_FILE)
    assert len(rows) == 48 and set(rows[0]) == {"step", "prompt", "completion", "rewards", "advantage"}
    assert set(rows[0]["rewards"]) == {"exact_match_or_stall"} and rows[0]["rewards"]["exact_match_or_stall"] in (0.0, 1.0)
    assert "+" in rows[0]["prompt"] and isinstance(rows[0]["completion"], str)
    assert not (full / "completions").exists()  # TRL's per-log parquet copies are not written
    # the progress bar shows elapsed<remaining
    assert re.search(r" 1/6 \[\d+:\d\d<\d+:\d\d", runs["full_stderr"]), runs["full_stderr"][-2000:]


@pytest.mark.slow
def test_report_to_tensorboard_writes_event_files(runs):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(runs["full"].glob("runs/*/events.out.tfevents.*"))
    assert len(events) == 1

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("train/reward")] == [1, 3, 5]


def test_curves_are_redrawn_during_the_run(tmp_path):
    from transformers import TrainerState

    callback = MetricsFileCallback(tmp_path, plot_every=3, plot_every_seconds=0.0)
    state = TrainerState()
    png = tmp_path / "training_curves.png"
    for step in range(1, 8):
        state.global_step = step
        callback.on_log(None, state, None, logs={"loss": 1.0 / step, "reward": 0.1 * step, "rewards/exact/mean": 0.1})
        if step == 2:
            assert not png.exists()
        if step == 3:
            assert png.exists() and callback.drawings == 1
    assert callback.drawings == 2  # after logs 3 and 6; not yet after 7
    callback.on_train_end(None, state, None)
    assert callback.drawings == 3


def test_curves_are_redrawn_at_most_once_a_minute(tmp_path, monkeypatch):
    """Drawing runs on the training thread: logs every step must not redraw more often than the time limit."""
    from transformers import TrainerState

    import swift_cispo.records as callbacks

    clock = [1000.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    callback = MetricsFileCallback(tmp_path, plot_every=2)
    state = TrainerState()
    for step in range(1, 21):  # 20 logs, one every 5 s: 100 s in all
        clock[0] += 5.0
        state.global_step = step
        callback.on_log(None, state, None, logs={"loss": 1.0 / step, "reward": 0.1 * step})
    assert callback.drawings == 1  # at 60 s; the next would be due at 120 s
    callback.on_train_end(None, state, None)
    assert callback.drawings == 2


def test_truncate_jsonl_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "logging.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "loss": 0.5}\n{"step": 3}\n{"step": 4, "lo')  # the last line cut by a kill
    assert truncate_jsonl(path, 2) == [{"step": 1}, {"step": 2, "loss": 0.5}]
    assert path.read_text() == '{"step": 1}\n{"step": 2, "loss": 0.5}\n'


def test_report_to_needs_its_package(tmp_path, monkeypatch, tiny_model_dir, data_file):
    with pytest.raises(UserError, match="--report_to tensorbord is not a known integration; allowed: none, all, "):
        check_reporting(["tensorbord"])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("tensorboard") else real_find_spec(name, *a))
    with pytest.raises(UserError, match="--report_to tensorboard needs the tensorboard package, which is not installed: pip install tensorboard"):
        check_reporting(["tensorboard"])
    monkeypatch.undo()
    if real_find_spec("wandb") is None:  # through the command line's own run(), which stops before loading anything
        from swift_cispo.cli.rlhf import run

        argv = ["--model", str(tiny_model_dir), "--dataset", str(data_file), "--reward_funcs", "exact_match"]
        with pytest.raises(UserError, match=r"--report_to wandb needs the wandb package, which is not installed: pip install wandb"):
            run([*argv, "--report_to", "wandb", "--output_dir", str(tmp_path / "o")])
        assert not (tmp_path / "o").exists()


def test_a_folder_the_user_had_is_never_removed(tmp_path, tiny_model_dir):
    """A bad dataset stops the run before training; the run's own new folder goes, the user's empty one stays."""
    from swift_cispo.cli.rlhf import run

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"notes": "no prompt column"}\n')
    argv = ["--model", str(tiny_model_dir), "--dataset", str(bad), "--reward_funcs", "exact_match"]
    mine = tmp_path / "mine"
    mine.mkdir()
    for out in (mine, tmp_path / "new"):
        with pytest.raises(UserError):
            run([*argv, "--output_dir", str(out)])
    assert mine.is_dir() and not any(mine.iterdir())
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- faults
def test_reward_that_raises_names_the_function_and_the_sample(tmp_path, tiny_model_dir, data_file):
    from swift_cispo.cli.rlhf import run
    from swift_cispo.rewards import ORM, orms

    class Judge(ORM):
        def __call__(self, completions, **kwargs):
            raise ConnectionError("judge at http://judge:8000 is offline")

    orms["judge_test"] = Judge
    try:
        with pytest.raises(UserError) as caught:
            run([
                "--model", str(tiny_model_dir), "--dataset", str(data_file), "--reward_funcs", "judge_test",
                "--output_dir", str(tmp_path / "o"), "--max_steps", "1", "--num_generations", "4",
                "--per_device_train_batch_size", "8", "--max_completion_length", "4", "--use_cpu", "true",
            ])  # fmt: skip
    finally:
        del orms["judge_test"]
    message = str(caught.value)
    assert message.startswith(
        "reward function 'judge_test' raised ConnectionError: judge at http://judge:8000 is offline on completion 0 (prompt '"
    )
    assert message.endswith("fix the function or the data it reads") and "\n" not in message


def test_reward_faults_locate_the_completion():
    from swift_cispo.rewards import ORM, orms, reward_function

    class DividesByAnswer(ORM):
        def __call__(self, completions, answer, **kwargs):
            return [1 / int(a) for a in answer]

    class NotANumber(ORM):
        def __call__(self, completions, **kwargs):
            return [0.5, float("nan"), None]

    class TooFew(ORM):
        def __call__(self, completions, **kwargs):
            return [1.0]

    orms.update(divides_test=DividesByAnswer, nan_test=NotANumber, too_few_test=TooFew)
    try:
        batch = dict(prompts=["1+2=", "2+2=", "0+0="], completions=["3", "4", "0"], answer=["3", "4", "0"], trainer_state=None)
        with pytest.raises(UserError, match=r"'divides_test' raised ZeroDivisionError: division by zero on completion 2 \(prompt '0\+0='\)"):
            reward_function("divides_test")(**batch)
        with pytest.raises(UserError, match=r"'nan_test' returned nan for completion 1 \(prompt '2\+2='\); rewards must be finite"):
            reward_function("nan_test")(**batch)
        with pytest.raises(UserError, match="'too_few_test' returned 1 rewards for 3 completions"):
            reward_function("too_few_test")(**batch)
        assert reward_function("divides_test")(**{**batch, "answer": ["3", "4", "5"]}) == [1 / 3, 1 / 4, 1 / 5]
    finally:
        for name in ("divides_test", "nan_test", "too_few_test"):
            del orms[name]


@pytest.mark.slow
def test_nan_loss_stops_before_the_optimizer_step(tmp_path, tiny_model_dir, data_file):
    plugin = tmp_path / "nan_loss.py"
    plugin.write_text(
        "import torch\n"
        "from swift_cispo import LossOutput, register_loss\n"
        "calls = []\n"
        "@register_loss('nan_at_step_2', reduction='global_token_mean')\n"
        "def nan_at_step_2(log_probs, old_log_probs, advantages, mask, config):\n"
        "    calls.append(1)  # one call per optimizer step here (no accumulation, no evaluation)\n"
        "    loss = -advantages * log_probs\n"
        "    return LossOutput(per_token_loss=loss * float('nan') if len(calls) == 2 else loss)\n"
    )
    out = tmp_path / "o"
    result = swift(
        "rlhf", "--model", tiny_model_dir, "--dataset", data_file, "--external_plugins", plugin, "--reward_funcs", "exact_match",
        "--loss_type", "nan_at_step_2", "--output_dir", out, "--max_steps", "4", "--save_steps", "1",
        "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "4", "--logging_steps", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert_clean_error(result, "step 2: the loss is nan (the log-probs are finite), so training stopped before the optimizer step")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert incomplete_reason(out / "checkpoint-1") is None
    assert all(torch.isfinite(t).all() for t in _weights(out / "checkpoint-1").values())
    assert not (out / "model.safetensors").exists()


def test_non_finite_checks():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    log_probs = torch.tensor([[-1.0, -2.0, float("nan")]])  # NaN only where the mask is 0: padding
    assert non_finite_problem(torch.tensor(0.3), log_probs, mask) is None
    assert non_finite_problem(torch.tensor(float("inf")), log_probs, mask) == "the loss is inf (the log-probs are finite)"
    log_probs[0, 0] = float("-inf")
    assert non_finite_problem(torch.tensor(float("nan")), log_probs, mask) == (
        "the loss is nan (1 completion-token log-probs are NaN or inf)"
    )

    from transformers import TrainerState

    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.ones(2, 2)
    model.bias.grad = torch.zeros(2)
    guard = NonFiniteGradientGuard()
    guard.on_pre_optimizer_step(None, TrainerState(global_step=4), None, model=model)  # finite: nothing happens
    model.bias.grad[1] = float("nan")
    with pytest.raises(NonFiniteError, match="step 5: the gradient of bias is NaN or inf"):
        guard.on_pre_optimizer_step(None, TrainerState(global_step=4), None, model=model)


# --------------------------------------------------------------------------- security
def test_trust_remote_code_is_off_unless_asked(monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swift_cispo.cli.args import ModelArguments
    from swift_cispo.cli.model import load_model_and_tokenizer
    from swift_cispo.cli.rlhf import parse

    seen = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    model_args = parse(["--model", str(tiny_model_dir), "--dataset", "d.jsonl"])[0]
    load_model_and_tokenizer(model_args)
    assert seen == [False, False]
    load_model_and_tokenizer(ModelArguments(model=str(tiny_model_dir), trust_remote_code=True))
    assert seen[2:] == [True, True]


def test_plugin_code_runs_only_when_named(tmp_path, monkeypatch, tiny_model_dir, data_file):
    from swift_cispo.cli.rlhf import run

    # Python files where a careless loader might look: the working directory and the output dir.
    out = tmp_path / "out"
    out.mkdir()
    marker_code = "from pathlib import Path\nPath(__file__).with_suffix('.ran').write_text('ran')\n"
    for path in (tmp_path / "plugin.py", tmp_path / "swift_plugin.py", out / "plugin.py"):
        path.write_text(marker_code)
    monkeypatch.chdir(tmp_path)
    argv = ["--model", str(tiny_model_dir), "--dataset", str(data_file), "--reward_funcs", "no_such_reward", "--output_dir", str(out)]
    with pytest.raises(UserError, match="unknown reward function 'no_such_reward'"):
        run(argv)  # stops after plugins are loaded and rewards looked up
    assert not list(tmp_path.rglob("*.ran"))
    with pytest.raises(UserError, match="unknown reward function 'no_such_reward'"):
        run([*argv, "--external_plugins", "plugin.py"])
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.ran")] == ["plugin.ran"]


def unsafe_loading_calls(source: str, filename: str = "<source>") -> list[str]:
    """Calls that can run code from a file: pickle.load(s) (or any import from pickle), torch.load without
    ``weights_only=True``, and ``trust_remote_code=True``; found in the syntax tree, so spacing cannot hide one."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle", "dill"):
            found.append(f"{filename}:{node.lineno} from {node.module} import ...")
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        func = node.func
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if owner in ("pickle", "_pickle", "dill") and name in ("load", "loads", "Unpickler"):
            found.append(f"{filename}:{node.lineno} {owner}.{name}")
        if owner == "torch" and name == "load":
            safe = keywords.get("weights_only")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                found.append(f"{filename}:{node.lineno} torch.load without weights_only=True")
        remote = keywords.get("trust_remote_code")
        if isinstance(remote, ast.Constant) and remote.value is True:
            found.append(f"{filename}:{node.lineno} trust_remote_code=True")
    return found


def test_the_unsafe_loading_check_finds_what_it_should():
    risky = (
        "import pickle, torch\nfrom pickle import loads\n"
        "pickle . loads(b'')\ntorch.load (f)\ntorch.load(f, weights_only=False)\n"
        "m = f(x, trust_remote_code = True)\ntorch.load(f, weights_only=True)\n"
    )
    assert [hit.split(" ", 1)[1] for hit in unsafe_loading_calls(risky)] == [
        "from pickle import ...", "pickle.loads", "torch.load without weights_only=True",
        "torch.load without weights_only=True", "trust_remote_code=True",
    ]  # fmt: skip


def test_no_pickle_loading_in_the_package(tmp_path):
    from swift_cispo.data import read_source

    pickled = tmp_path / "rows.pkl"
    pickled.write_bytes(b"\x80\x04N.")
    with pytest.raises(UserError, match="unsupported extension '.pkl'"):
        read_source(str(pickled))
    files = sorted((REPO / "swift_cispo").rglob("*.py"))
    assert len(files) > 30
    found = [hit for path in files for hit in unsafe_loading_calls(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []


@pytest.mark.slow
def test_extending_a_finished_run_matches_the_straight_run(runs):
    """Stopped by --max_steps 3 (inside a generation window: the demo's steps_per_generation is 2), resumed to
    --max_steps 6 under a constant learning rate: the weights equal the uninterrupted 6-step run's, and the
    resumed steps really moved them."""
    part = runs["root"] / "part"
    common = [str(token) for token in runs["common"]]
    stopped = swift(*override_flags(common, ["--max_steps", "3"]), "--output_dir", part, cwd=runs["root"])
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert (part / "model.safetensors").is_file() and sorted(p.name for p in part.glob("checkpoint-*"))[-1] == "checkpoint-3"
    resumed = swift(*common, "--output_dir", part, "--resume_from_checkpoint", part / "checkpoint-3", cwd=runs["root"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "scale with the run's length" not in resumed.stderr  # a constant schedule: nothing to warn about
    assert _max_abs_diff(_weights(part), _weights(runs["full"])) == 0.0
    assert _max_abs_diff(_weights(part), _weights(part / "checkpoint-3")) > 1e-4
