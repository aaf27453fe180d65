"""The run's record files in the output dir, and the callback that writes the metrics file.

- ``logging.jsonl`` (:data:`METRICS_FILE`): every logged dict, with its step (appended as training goes).
- ``completions.jsonl`` (:data:`COMPLETIONS_FILE`): with ``--log_completions true``, every rollout's
  prompts, completions and rewards (written by the trainer through :func:`append_jsonl`).
- ``training_curves.png`` (:data:`CURVES_FILE`): drawn by :mod:`swift_cispo.plots` from the records.
- ``scaling_fit.json`` / ``scaling_fit.png`` (with ``--scaling_fit true``): ScaleRL's curve fitted to the pass
  rate as training goes (:class:`ScalingFitCallback`, :mod:`swift_cispo.scaling`).

A resumed run redoes the steps after its checkpoint, so it first drops their records from both
files, then appends: each step appears once.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from . import scaling
from .plots import plot_curves

METRICS_FILE = "logging.jsonl"
CURVES_FILE = "training_curves.png"
COMPLETIONS_FILE = "completions.jsonl"

#: Redraw the curves after this many new log records, and no sooner than PLOT_EVERY_SECONDS after the
#: last drawing. A drawing takes ~0.5 s of the training loop's time (matplotlib is Python, on the training
#: thread); every 10 logs of a 0.3 s step that was ~10% of the run (bench/cli_vs_trl.py, profiled), at most
#: one drawing a minute keeps it under 1%. Saves and the end of training always redraw.
PLOT_EVERY_LOGS = 10
PLOT_EVERY_SECONDS = 60.0


class MetricsFileCallback(TrainerCallback):
    """Appends every logged dict (with its step) to ``logging.jsonl`` and redraws the curves every
    ``plot_every`` logs (at most once every ``plot_every_seconds``), at each save and at the end. Only the
    main process writes."""

    def __init__(self, output_dir: str | Path, plot_every: int = PLOT_EVERY_LOGS, plot_every_seconds: float = PLOT_EVERY_SECONDS):
        self.output_dir = Path(output_dir)
        self.plot_every = plot_every
        self.plot_every_seconds = plot_every_seconds
        self._last_drawing = time.monotonic()  # the first curves come a minute into the run, not at its first log
        self.records: list[dict] = []
        self.drawings = 0  # how many times the curves were drawn
        self._logs_since_drawing = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step > 0:  # resumed: the steps after the checkpoint are redone
            self.records = truncate_jsonl(self.output_dir / METRICS_FILE, state.global_step)
            truncate_jsonl(self.output_dir / COMPLETIONS_FILE, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        self.records.append(record)
        append_jsonl(self.output_dir / METRICS_FILE, [record])
        self._logs_since_drawing += 1
        if self._logs_since_drawing >= self.plot_every and time.monotonic() - self._last_drawing >= self.plot_every_seconds:
            self.draw()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.draw()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.draw()

    def draw(self) -> None:
        if plot_curves(self.records, self.output_dir / CURVES_FILE) is not None:
            self.drawings += 1
        self._logs_since_drawing = 0
        self._last_drawing = time.monotonic()


FIT_FILE = "scaling_fit.json"
FIT_PLOT = "scaling_fit.png"
#: Refit after this many new points (a fit takes milliseconds; this keeps the logged values from jittering).
REFIT_EVERY = 5


class ScalingFitCallback(TrainerCallback):
    """Fits ScaleRL's curve to the run's pass rate as it trains: the evaluation reward when the run evaluates,
    else the training reward, against the rollouts' cumulative tokens. Every REFIT_EVERY new points (once there
    are enough) it adds ``fit/A``, ``fit/A_err``, ``fit/B``, ``fit/C_mid`` to that log (callbacks after this one,
    such as the metrics file, record them) and rewrites ``scaling_fit.json``; at the end it draws
    ``scaling_fit.png`` and logs the fit. Only the main process fits."""

    def __init__(self, output_dir, logger=None):
        self.output_dir = Path(output_dir)
        self.logger = logger
        self.records: list[dict] = []
        self.metric = "reward"
        self.fit = None  # the latest scaling.CurveFit
        self._points: tuple[list, list] = ([], [])  # its (compute, value) points
        self._points_at_fit = 0

    def on_train_begin(self, args, state, control, **kwargs):
        strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
        self.metric = "reward" if strategy == "no" else "eval_reward"
        if state.is_world_process_zero and state.global_step > 0:  # resumed: the points so far
            self.records = [row for row in read_jsonl(self.output_dir / METRICS_FILE) if row.get("step", 0) <= state.global_step]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.records.append({"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})
        if self.metric not in logs:
            return
        points = sum(self.metric in r for r in self.records)
        if points > scaling.MIN_POINTS and points - self._points_at_fit >= REFIT_EVERY and self._refit():
            self._points_at_fit = points
            logs.update({"fit/A": self.fit.a, "fit/A_err": self.fit.a_err, "fit/B": self.fit.b, "fit/C_mid": self.fit.c_mid})

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        reason = self._refit()
        if self.fit is None:
            if self.logger is not None:
                self.logger.info("scaling fit: none (%s)", reason)
            return
        from .plots import plot_scaling_fits

        xs, ys = self._points  # those of the latest good fit
        plot_scaling_fits([(self.output_dir.name, xs, ys, self.fit)], self.output_dir / FIT_PLOT, self.metric, "tokens")
        fit = self.fit
        if self.logger is not None:
                self.logger.info(
                "scaling fit of %s vs tokens (%d points): A = %.4f ± %.4f, B = %.3f ± %.3f, C_mid = %.4g ± %.2g tokens%s; %s",
                self.metric, fit.points, fit.a, fit.a_err, fit.b, fit.b_err, fit.c_mid, fit.c_mid_err,
                "" if fit.pinned_down else " (not pinned down by these points: train longer or log more often)",
                self.output_dir / FIT_PLOT,
            )  # fmt: skip

    def _refit(self) -> str | bool:
        """Fit the points so far; True when it worked, else the reason (the last good fit is kept)."""
        try:
            _, xs, ys = scaling.run_points(self.records, self.metric, "tokens")
            self.fit = scaling.fit_saturating_curve(xs, ys)
        except scaling.FitError as err:
            return str(err)
        self._points = (xs, ys)
        record = {"metric": self.metric, "compute": "tokens", **self.fit.as_dict()}
        (self.output_dir / FIT_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        return True


# --------------------------------------------------------------------------- files
def append_jsonl(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        # default=str: a prompt may hold objects JSON has no type for (an image in a multimodal message)
        handle.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines record file (none if it does not exist); a line cut short by a killed process is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def truncate_jsonl(path: Path, last_step: int) -> list[dict]:
    """Keep the rows of steps <= ``last_step`` (rewriting the file in one rename) and return them.

    A line cut short by a killed process is dropped too.
    """
    if not path.is_file():
        return []
    kept = [row for row in read_jsonl(path) if row.get("step", 0) <= last_step]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept), encoding="utf-8")
    partial.replace(path)
    return kept


def completion_rows(logs: dict, step: int) -> list[dict]:
    """TRL's record of the latest rollout (``trainer._logs``) as one JSON-ready row per completion.

    ``rewards`` holds each reward function's raw value (None where it did not apply), ``advantage``
    the normalised advantage the loss used.
    """
    reward_columns = dict(logs["rewards"])
    rows = []
    for index, (prompt, completion) in enumerate(zip(logs["prompt"], logs["completion"])):
        rewards = {name: _finite_or_none(values[index]) for name, values in reward_columns.items()}
        advantage = _finite_or_none(logs["advantages"][index]) if index < len(logs["advantages"]) else None
        rows.append({"step": step, "prompt": prompt, "completion": completion, "rewards": rewards, "advantage": advantage})
    return rows


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
