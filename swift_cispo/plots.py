"""The training curves (``training_curves.png``): one panel per group of logged metrics, against the step."""

from __future__ import annotations

import math
from pathlib import Path

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


def plot_scaling_fits(runs: list[tuple], path: Path, metric: str, compute: str) -> Path:
    """Each run's points and its fitted ScaleRL curve (``runs``: (label, compute, values, CurveFit or None)), the
    asymptotes A dashed, on one log-compute axis; written next to a partial file, then renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for index, (label, xs, ys, fit) in enumerate(runs):
        color = f"C{index % 10}"
        shown = [(x, y) for x, y in zip(xs, ys) if x > 0]
        if shown:
            ax.plot(*zip(*shown), ".", color=color, alpha=0.5, label=label if fit is None else None)
        if fit is not None:
            grid = np.geomspace(min(x for x, _ in shown), max(x for x, _ in shown) * 10, 200)
            ax.plot(grid, fit.predict(grid), "-", color=color, label=f"{label}: A={fit.a:.3f}±{fit.a_err:.3f}, B={fit.b:.2f}")
            ax.axhline(fit.a, color=color, linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"compute ({compute})")
    ax.set_ylabel(metric)
    ax.set_title("ScaleRL fit: R0 + (A - R0) / (1 + (C_mid / C)^B)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    fig.savefig(partial, dpi=110)
    plt.close(fig)
    partial.replace(path)
    return path
