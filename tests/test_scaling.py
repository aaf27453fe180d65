"""ScaleRL's saturating curve: the fit recovers known parameters, compares runs, and fails in one sentence."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import swift_in_process
from swift_cispo.records import ScalingFitCallback
from swift_cispo.scaling import FitError, fit_saturating_curve, run_points, saturating_curve

TRUE = dict(r0=0.2, a=0.8, b=1.7, c_mid=5e4)
COMPUTE = np.geomspace(1e3, 1e6, 40)


def test_a_noise_free_curve_gives_back_its_parameters():
    fit = fit_saturating_curve(COMPUTE, saturating_curve(COMPUTE, **TRUE), r0=TRUE["r0"])
    assert fit.a == pytest.approx(TRUE["a"], rel=1e-4)
    assert fit.b == pytest.approx(TRUE["b"], rel=1e-4)
    assert fit.c_mid == pytest.approx(TRUE["c_mid"], rel=1e-4)
    assert fit.points == 40 and fit.rmse < 1e-6
    assert fit.predict(TRUE["c_mid"]) == pytest.approx((TRUE["r0"] + TRUE["a"]) / 2)  # half the gain at C_mid


def test_noisy_curves_are_told_apart_by_their_asymptotes():
    rng = np.random.default_rng(0)
    fits = {}
    for a in (0.8, 0.7):
        reward = saturating_curve(COMPUTE, **{**TRUE, "a": a}) + rng.normal(0, 0.01, COMPUTE.shape)
        fits[a] = fit_saturating_curve(COMPUTE, reward, r0=TRUE["r0"])
        assert abs(fits[a].a - a) < 3 * fits[a].a_err + 1e-3, fits[a]
        assert 0 < fits[a].a_err < 0.02
        assert abs(fits[a].b - TRUE["b"]) < 4 * fits[a].b_err, fits[a]
    assert fits[0.8].a - fits[0.7].a > 3 * (fits[0.8].a_err + fits[0.7].a_err)  # a real gap, beyond both error bars


def test_noise_alone_is_fitted_but_said_not_to_pin_the_curve_down():
    rng = np.random.default_rng(1)
    fit = fit_saturating_curve(COMPUTE[:10], 0.3 + rng.normal(0, 0.02, 10), r0=0.3)
    assert not fit.pinned_down, fit
    assert fit_saturating_curve(COMPUTE, saturating_curve(COMPUTE, **TRUE), r0=TRUE["r0"]).pinned_down


def test_without_r0_the_first_point_is_the_start_and_is_not_fitted():
    reward = saturating_curve(COMPUTE, **TRUE)
    fit = fit_saturating_curve(np.concatenate([[500.0], COMPUTE + 500.0]), np.concatenate([[TRUE["r0"]], reward]))
    assert fit.r0 == TRUE["r0"] and fit.points == 40 and fit.c0 == 500.0  # compute counted from the first point's
    assert fit.predict(500.0) == pytest.approx(TRUE["r0"]) and fit.predict(TRUE["c_mid"] + 500.0) == pytest.approx(0.5)
    assert fit.a == pytest.approx(TRUE["a"], rel=1e-4)


@pytest.mark.parametrize(
    "compute, reward, message",
    [
        ([1, 2, 3], [0.1, 0.2, 0.3], "2 points with compute > 0 to fit; the curve needs at least 6"),
        (list(range(1, 12)), [0.5] * 11, "the metric never rose above its starting value 0.5"),
        ([1, 2], [0.1], "compute and reward must be two lists of the same length"),
    ],
)
def test_points_that_cannot_be_fitted_are_named(compute, reward, message):
    with pytest.raises(FitError, match=message):
        fit_saturating_curve(compute, reward)


def _records(a: float = 0.8, evaluate: bool = False, steps: int = 30) -> list[dict]:
    """A run's logging.jsonl: 1000 tokens per step, logged every 10 steps from step 1; the reward is on TRUE's
    curve (with a=a) in the tokens spent since the first log (the fit's compute axis)."""
    records = []
    for step in [1, *range(10, steps * 10 + 1, 10)]:
        tokens = 1000.0 * step
        value = float(saturating_curve(max(tokens - 1000.0, 1e-9), **{**TRUE, "a": a}))
        records.append({"step": step, "num_tokens": tokens, "reward": value})
        if evaluate:
            records.append({"step": step, "eval_reward": value - 0.01})
    return records


def test_run_points_take_the_evaluation_reward_at_the_training_token_count():
    metric, xs, ys = run_points(_records(evaluate=True))
    assert metric == "eval_reward"
    assert xs[:3] == [1000.0, 10000.0, 20000.0]  # an evaluation record's compute: the training's count at its step
    assert run_points(_records(), compute="steps")[1][:3] == [1.0, 10.0, 20.0]
    with pytest.raises(FitError, match="no record holds 'accuracy' \\(reward metrics logged: reward\\)"):
        run_points(_records(), metric="accuracy")


def test_the_callback_logs_the_fit_as_training_goes_and_draws_it_at_the_end(tmp_path):
    import logging

    callback = ScalingFitCallback(tmp_path, logging.getLogger("test_scaling"))
    args = SimpleNamespace(eval_strategy="no")
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    callback.on_train_begin(args, state, None)
    logged = []
    for record in _records(steps=20):
        state.global_step = record["step"]
        logs = {k: v for k, v in record.items() if k != "step"}
        callback.on_log(args, state, None, logs=logs)
        logged.append(logs)
    with_fit = [logs for logs in logged if "fit/A" in logs]
    assert len(with_fit) == 3  # refitted at points 7, 12 and 17 of 21
    assert with_fit[-1]["fit/A"] == pytest.approx(0.8, rel=1e-3) and with_fit[-1]["fit/A_err"] < 1e-3
    saved = json.loads((tmp_path / "scaling_fit.json").read_text())
    assert saved["metric"] == "reward" and saved["a"] == pytest.approx(0.8, rel=1e-3)
    callback.on_train_end(args, state, None)
    assert (tmp_path / "scaling_fit.png").stat().st_size > 10_000


def _write_run(folder, records):
    folder.mkdir()
    (folder / "logging.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_swift_fit_compares_runs_in_a_table_and_a_picture(tmp_path, capsys):
    high, low = _write_run(tmp_path / "high", _records(0.8)), _write_run(tmp_path / "low", _records(0.6))
    picture = tmp_path / "both.png"
    result = swift_in_process("fit", high, low, "--out", picture, capsys=capsys)
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith(f"| {tmp_path}")}
    assert "| 0.8000 ±" in rows[str(high)] and "| 0.6000 ±" in rows[str(low)], result.stdout
    assert rows[str(high)].endswith("| yes |") and "pinned down = no" not in result.stdout
    assert picture.stat().st_size > 10_000
    one = swift_in_process("fit", high, capsys=capsys)
    assert one.returncode == 0 and (high / "scaling_fit.png").is_file()


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda p: [p / "missing"], "holds no logging.jsonl: give the --output_dir of a swift rlhf run"),
        (lambda p: [p / "high", p / "low"], "several runs are drawn on one picture: say where with --out FILE.png"),
        (lambda p: [p / "high", "--compute", "flops"], "--compute: invalid choice: 'flops'"),
        (lambda p: [p / "flat"], "flat: the metric never rose above its starting value"),
        (lambda p: [], "name at least one run directory"),
    ],
)
def test_swift_fit_refuses_in_one_sentence(tmp_path, capsys, make_args, message):
    _write_run(tmp_path / "high", _records(0.8))
    _write_run(tmp_path / "low", _records(0.6))
    _write_run(tmp_path / "flat", [{"step": s, "num_tokens": s * 1.0, "reward": 0.3} for s in range(1, 20)])
    result = swift_in_process("fit", *make_args(tmp_path), capsys=capsys)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert message in line, line


@pytest.mark.slow
def test_scaling_fit_from_the_command_line_logs_the_fit_and_draws_it(tmp_path):
    """--scaling_fit true on a short demo run: the fit joins the metrics file once 7 points are logged, and the end
    of training writes scaling_fit.json and the picture and says the fit (here: not pinned down, 24 steps)."""
    from helpers import read_metrics, swift

    out = tmp_path / "run"
    result = swift("rlhf", "--max_steps", "24", "--logging_steps", "3", "--per_device_train_batch_size", "64",
                   "--save_strategy", "no", "--scaling_fit", "true", "--output_dir", out, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    fitted = [m for m in read_metrics(out) if "fit/A" in m]
    assert [m["step"] for m in fitted] == [21], fitted  # the 7th reward after the first, at step 21
    assert set(json.loads((out / "scaling_fit.json").read_text())) >= {"a", "a_err", "b", "c_mid", "r0", "points"}
    assert (out / "scaling_fit.png").stat().st_size > 10_000
    assert "scaling fit of reward vs tokens (7 points): A = " in result.stderr, result.stderr[-2000:]
