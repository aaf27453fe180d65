"""The run's record files in the output dir, and the callback that writes the metrics file.

- ``logging.jsonl`` (:data:`METRICS_FILE`): every logged dict, with its step (appended as training goes).
- ``completions.jsonl`` (:data:`COMPLETIONS_FILE`): with ``--log_completions true``, every rollout's
  prompts, completions and rewards (written by the trainer through :func:`append_jsonl`).
- ``training_curves.png`` (:data:`CURVES_FILE`): drawn by :mod:`swift_cispo.plots` from the records.

A resumed run redoes the steps after its checkpoint, so it first drops their records from both
files, then appends: each step appears once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

from .plots import plot_curves

METRICS_FILE = "logging.jsonl"
CURVES_FILE = "training_curves.png"
COMPLETIONS_FILE = "completions.jsonl"

#: Redraw the curves after this many new log records (drawing takes ~0.5 s, logging may be every step).
PLOT_EVERY_LOGS = 10


class MetricsFileCallback(TrainerCallback):
    """Appends every logged dict (with its step) to ``logging.jsonl`` and redraws the curves every
    ``plot_every`` logs, at each save and at the end. Only the main process writes."""

    def __init__(self, output_dir: str | Path, plot_every: int = PLOT_EVERY_LOGS):
        self.output_dir = Path(output_dir)
        self.plot_every = plot_every
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
        if self._logs_since_drawing >= self.plot_every:
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


# --------------------------------------------------------------------------- files
def append_jsonl(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        # default=str: a prompt may hold objects JSON has no type for (an image in a multimodal message)
        handle.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)


def truncate_jsonl(path: Path, last_step: int) -> list[dict]:
    """Keep the rows of steps <= ``last_step`` (rewriting the file in one rename) and return them.

    A line cut short by a killed process is dropped too.
    """
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= last_step:
            kept.append(row)
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
