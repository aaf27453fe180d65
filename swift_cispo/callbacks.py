"""Training callbacks and the files they write into the output dir: metrics, curves, completions.

- ``logging.jsonl``: every logged dict, with its step (appended as training goes).
- ``training_curves.png``: the curves, redrawn every few logs, at each save and at the end.
- ``completions.jsonl``: with ``--log_completions true``, every rollout's prompts, completions and
  rewards (written by the trainer through :func:`append_jsonl`).

A resumed run redoes the steps after its checkpoint, so it first drops their records from both
files, then appends: each step appears once.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from .errors import NonFiniteError, UserError

METRICS_FILE = "logging.jsonl"
CURVES_FILE = "training_curves.png"
COMPLETIONS_FILE = "completions.jsonl"

#: Redraw the curves after this many new log records, and no sooner than PLOT_EVERY_SECONDS after the
#: last drawing. A drawing takes ~0.5 s of the training loop's time (matplotlib is Python, on the training
#: thread); every 10 logs of a 0.3 s step that was ~10% of the run (bench/cli_vs_trl.py, profiled), at most
#: one drawing a minute keeps it under 1%. Saves and the end of training always redraw.
PLOT_EVERY_LOGS = 10
PLOT_EVERY_SECONDS = 60.0

# Panels of the picture: (title, metric names drawn in it). Missing metrics are skipped; the
# "reward per function" panel takes every rewards/<name>/mean that was logged.
_PANELS = (
    ("reward", ("reward", "eval_reward")),
    ("reward per function", ()),
    ("loss", ("loss",)),
    ("entropy", ("entropy",)),
    (
        "clip ratios",
        (
            "cispo_clip_ratio",
            "cispo_clip_ratio/low",
            "cispo/kept_where_ppo_zeroes",
            "clip_ratio/region_mean",
            "clip_ratio/low_mean",
            "clip_ratio/high_mean",
        ),
    ),
    (
        "importance weight",
        ("cispo/is_weight_mean", "cispo/is_weight_max", "cispo/is_ratio_max", "is_ratio_max", "rollout_is/weight_mean"),
    ),
    ("completion length", ("completions/mean_length", "completions/max_length", "completions/min_length")),
)


class MetricsFileCallback(TrainerCallback):
    """Appends every logged dict (with its step) to ``logging.jsonl`` and redraws the curves every
    ``plot_every`` logs, at each save and at the end. Only the main process writes."""

    def __init__(self, output_dir: str | Path, plot_every: int = PLOT_EVERY_LOGS, plot_every_seconds: float = PLOT_EVERY_SECONDS):
        self.output_dir = Path(output_dir)
        self.plot_every = plot_every
        self.plot_every_seconds = plot_every_seconds
        self._last_drawing = time.monotonic()  # the first curves come a minute into the run, not at its first log
        self.records: list[dict] = []
        self.drawings = 0  # how many times the curves were drawn
        self._logs_since_drawing = 0
        self._last_drawing = time.monotonic()

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


class NonFiniteGradientGuard(TrainerCallback):
    """Stops training before an optimizer step whose gradients hold NaN or inf (the loss itself was finite).

    The loss and log-probs are checked by the trainer; this catches what only backward produces.
    Not used with fp16, whose loss scaler expects overflows and skips those steps itself.
    """

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        if model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]  # none under DeepSpeed: it holds them
        if not grads or math.isfinite(float(torch.nn.utils.get_total_norm(grads))):
            return
        name = next(n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all())
        raise NonFiniteError(
            f"step {state.global_step + 1}: the gradient of {name} is NaN or inf, so training stopped before the "
            "optimizer step; the weights and the checkpoints saved so far are unchanged"
        )


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


# --------------------------------------------------------------------------- --report_to
# Integration -> the modules that provide it (any one will do), and how to get one.
_REPORTER_PACKAGES = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
    "wandb": (("wandb",), "pip install wandb (WANDB_MODE=offline logs without an account)"),
    "trackio": (("trackio",), "pip install trackio"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "comet_ml": (("comet_ml",), "pip install comet_ml"),
    "clearml": (("clearml",), "pip install clearml"),
    "swanlab": (("swanlab",), "pip install swanlab"),
    "neptune": (("neptune",), "pip install neptune"),
    "dvclive": (("dvclive",), "pip install dvclive"),
}


def check_reporting(report_to: list[str] | None) -> None:
    """A UserError for a --report_to integration that is unknown or whose package is not installed.

    transformers would fail on either deep inside the trainer's constructor, with a traceback.
    """
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in report_to or []:
        if name not in INTEGRATION_TO_CALLBACK:
            allowed = ", ".join(["none", "all", *sorted(INTEGRATION_TO_CALLBACK)])
            raise UserError(f"--report_to {name} is not a known integration; allowed: {allowed}")
        modules, install = _REPORTER_PACKAGES.get(name, ((), ""))
        if modules and not any(importlib.util.find_spec(module) for module in modules):
            raise UserError(f"--report_to {name} needs the {modules[0]} package, which is not installed: {install}")


# --------------------------------------------------------------------------- curves
def curve_panels(records: list[dict]) -> list[tuple[str, list[str]]]:
    """The panels that have data: (title, metric names), in :data:`_PANELS` order."""
    logged = {key for record in records for key in record}
    per_reward = sorted(k for k in logged if k.startswith("rewards/") and k.endswith("/mean"))
    panels = []
    for title, names in _PANELS:
        present = per_reward if title == "reward per function" else [n for n in names if n in logged]
        if present:
            panels.append((title, present))
    return panels


def plot_curves(records: list[dict], path: Path) -> Path | None:
    """Draw every panel of :func:`curve_panels` against the optimizer step; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels(records)
    if not panels:
        return None
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, names) in zip(axes.flat, panels):
        for name in names:
            points = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]
            if points:
                ax.plot(*zip(*points), marker=".", linewidth=1.2, label=name.removeprefix("rewards/").removesuffix("/mean"))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    fig.savefig(partial, dpi=110)  # then renamed: a viewer never reads a half-written picture
    plt.close(fig)
    partial.replace(path)
    return path
