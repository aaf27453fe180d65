"""Training callbacks: the metrics file and the training-curve picture written into the output dir."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

METRICS_FILE = "logging.jsonl"
CURVES_FILE = "training_curves.png"

# Panels of the picture: (title, metric names drawn in it). Missing metrics are skipped.
_PANELS = (
    ("reward", ("reward",)),
    ("loss", ("loss",)),
    ("entropy", ("entropy",)),
    ("importance weight", ("cispo/is_weight_mean", "rollout_is/weight_mean")),
    ("clipping", ("cispo_clip_ratio", "cispo/kept_where_ppo_zeroes", "clip_ratio/region_mean")),
)


class MetricsFileCallback(TrainerCallback):
    """Appends every logged dict (with its step) to ``logging.jsonl`` and redraws the curves at each
    save and at the end. Only the main process writes."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.records: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        self.records.append(record)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with (self.output_dir / METRICS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_curves(self.records, self.output_dir / CURVES_FILE)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_curves(self.records, self.output_dir / CURVES_FILE)


def plot_curves(records: list[dict], path: Path) -> Path | None:
    """Draw reward, loss, entropy and importance-weight curves against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(title, [n for n in names if any(n in r for r in records)]) for title, names in _PANELS]
    panels = [(title, names) for title, names in panels if names]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels):
        for name in names:
            points = [(r["step"], r[name]) for r in records if name in r and math.isfinite(r[name])]
            if points:
                ax.plot(*zip(*points), marker=".", linewidth=1.2, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
