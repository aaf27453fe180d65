"""CISPO vs DAPO on a real model: the SmolLM2 arithmetic recipe on the same seeds, a table and the curves.

    .venv/bin/python bench/smollm2_curves.py                # cispo and dapo on seeds 0 and 1 (about 21 min a run)
    .venv/bin/python bench/smollm2_curves.py --seeds 0 1 2  # a third seed; finished runs are not run again
    .venv/bin/python bench/smollm2_curves.py --report       # train nothing: table and figure from finished runs
    .venv/bin/python bench/smollm2_curves.py --smoke        # the recipe's SMOKE=1 mode (demo model), seconds a run

Each run is the recipe as a user runs it, ``LOSS=<loss> SEED=<seed> STEPS=<steps> bash
examples/scripts/cispo_smollm2_arith.sh``: SmolLM2-135M-Instruct, vLLM colocate, rollouts of 16 prompts x 8
completions trained in 4 optimizer steps of 32, so steps 2-4 of each rollout are off-policy by 1-3 updates.
That is where the two losses differ: DAPO zeroes the gradient of a token whose ratio left [0.8, 1.28] in the
direction its advantage pushes; CISPO keeps it, with the ratio capped at 5 as a stop-gradient weight.

A run writes into ``<out>/<loss>-s<seed>/`` (the trainer's ``logging.jsonl``, one line per step) and its output
into ``<out>/<loss>-s<seed>.log``. A run whose log reaches the end of training is not run again; an unfinished
one is moved aside (never deleted) and rerun. The table gives, per loss, the mean and range over seeds of the
accuracy and format rewards of the first and the last two rollouts, the first step of a rollout at
``--threshold`` accuracy, the completion length, the clipping metrics on the off-policy steps and the time; the
figure (``<out>/smollm2_curves.png``) shows the rewards, completion length, entropy and the tokens each loss clips.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import learning_curves as lc  # noqa: E402  (the seed bands and the PNG palette)

RECIPE = REPO / "examples" / "scripts" / "cispo_smollm2_arith.sh"
LOSSES = ("cispo", "dapo")  # the recipe's LOSS values
COLORS = {"cispo": "tab:blue", "dapo": "tab:orange"}
ACCURACY = "rewards/accuracy/mean"
FORMAT = "rewards/format/mean"  # 1 when the completion ends with a \boxed{} answer
SMOKE_ACCURACY = "rewards/exact_match/mean"  # the smoke mode's reward on the demo model
# What each loss clips, on the steps that reuse a rollout: DAPO's tokens outside its PPO region (no gradient), and
# CISPO's tokens whose weight hit the cap 5 (gradient kept, weight capped) or that PPO would have zeroed (kept).
CLIP_METRICS = {
    "dapo": (("clip_ratio/region_mean", "tokens clipped, no gradient"),),
    "cispo": (("cispo_clip_ratio", "weights capped at 5"), ("cispo/kept_where_ppo_zeroes", "kept where PPO zeroes")),
}


def run_name(loss: str, seed: int) -> str:
    return f"{loss}-s{seed}"


def read_run(folder: Path) -> tuple[list[dict], dict | None]:
    """The run's per-step rows and its closing summary (``train_runtime``; None while unfinished)."""
    path = folder / "logging.jsonl"
    if not path.is_file():
        return [], None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    summary = next((row for row in rows if "train_runtime" in row), None)
    return [row for row in rows if "loss" in row], summary


def train(loss: str, seed: int, opts) -> None:
    """One run of the recipe, its progress printed from its log as the steps finish."""
    folder = opts.out / run_name(loss, seed)
    log = opts.out / f"{folder.name}.log"
    if folder.exists():  # unfinished: keep what was there, and its output, under another name
        aside = folder.with_name(f"{folder.name}.unfinished-{time.strftime('%Y%m%d-%H%M%S')}")
        folder.rename(aside)
        if log.exists():
            log.rename(aside.with_name(aside.name + ".log"))
        print(f"[curves] {folder.name}: an unfinished run was moved to {aside.name}", file=sys.stderr, flush=True)
    env = {
        **os.environ, "LOSS": loss, "SEED": str(seed), "STEPS": str(opts.steps), "OUTPUT_DIR": str(folder),
        "SWIFT": f"{sys.executable} -m swift_cispo", "PYTHON": sys.executable, "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **({"SMOKE": "1"} if opts.smoke else {}),
    }  # fmt: skip
    started, shown = time.perf_counter(), 0
    print(f"[curves] {folder.name}: training ({opts.steps} steps; output in {log})", file=sys.stderr, flush=True)
    with open(log, "w") as sink:
        process = subprocess.Popen(["bash", str(RECIPE)], env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
        while process.poll() is None:
            time.sleep(2 if opts.smoke else 15)
            rows, _ = read_run(folder)
            for row in rows[shown:]:
                accuracy = row.get(ACCURACY, row.get(SMOKE_ACCURACY))
                scored = f", accuracy {accuracy:.2f}" if accuracy is not None else ""
                print(f"[curves] {folder.name}: step {row['step']}/{opts.steps}{scored}, "
                      f"{(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr, flush=True)  # fmt: skip
            shown = len(rows)
    if process.returncode != 0:
        sys.exit(f"[curves] {folder.name} failed with exit code {process.returncode}; its output: {log}")


def accuracy_points(rows: list[dict], name: str = ACCURACY) -> list[tuple[int, float]]:
    """(step, accuracy) at each rollout: the reward columns are logged on the step that generated it."""
    fallback = SMOKE_ACCURACY if name == ACCURACY else None
    return [(row["step"], row.get(name, row.get(fallback, math.nan))) for row in rows if "reward" in row]


def off_policy_mean(rows: list[dict], name: str, steps_per_rollout: int = 4) -> float:
    """A metric's mean over the steps that reuse a rollout (2-4 of each), where the ratio can leave 1."""
    values = [row[name] for row in rows if name in row and (row["step"] - 1) % steps_per_rollout]
    return statistics.fmean(values) if values else math.nan


def summarize(rows: list[dict], summary: dict, threshold: float) -> dict:
    """One run's numbers for the table."""
    points = accuracy_points(rows)
    accuracies = [accuracy for _, accuracy in points]
    formats = [value for _, value in accuracy_points(rows, FORMAT)]
    lengths = [row["completions/mean_length"] for row in rows if "completions/mean_length" in row]
    return {
        "first": accuracies[0],
        "last": statistics.fmean(accuracies[-2:]),
        "format_first": formats[0],
        "format_last": statistics.fmean(formats[-2:]),
        "reached": next((step for step, accuracy in points if accuracy >= threshold), None),
        "length_first": lengths[0],
        "length_last": lengths[-1],
        "minutes": summary["train_runtime"] / 60,
        "seconds_per_step": summary["train_runtime"] / len(rows),
        **{name: off_policy_mean(rows, name) for names in CLIP_METRICS.values() for name, _ in names},
    }


def _spread(values: list[float], fmt: str) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean, low, high = (fmt.format(v) for v in (statistics.fmean(values), min(values), max(values)))
    return mean if low == high else f"{mean} ({low}-{high})"


def table(results: dict[str, list[dict]], opts) -> str:
    """Markdown: one row per loss, mean (min-max) over its seeds."""
    lines = [
        f"| loss | seeds | accuracy, first rollout | accuracy, last 2 rollouts | first step at {opts.threshold:g} "
        "| format, first -> last 2 | completion tokens, first -> last rollout | clipping on reused steps "
        "| min per run | s per step |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for loss, runs in results.items():

        def cell(key: str, fmt: str = "{:.2f}") -> str:
            return _spread([run[key] for run in runs], fmt)

        reached = ", ".join("never" if run["reached"] is None else str(run["reached"]) for run in runs)
        clipping = "; ".join(
            f"{label} {_spread([100 * run[name] for run in runs], '{:.2f}%')}" for name, label in CLIP_METRICS[loss]
        )
        lines.append(
            f"| {loss} | {len(runs)} | {cell('first')} | {cell('last')} | {reached} "
            f"| {cell('format_first')} -> {cell('format_last')} "
            f"| {cell('length_first', '{:.0f}')} -> {cell('length_last', '{:.0f}')} "
            f"| {clipping} | {cell('minutes', '{:.1f}')} | {cell('seconds_per_step', '{:.1f}')} |"
        )
    return "\n".join(lines)


def plot(runs: dict[str, list[list[dict]]], opts, path: Path) -> None:
    """Accuracy per rollout, completion length, entropy, and what each loss clips; mean and min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    steps = range(1, opts.steps + 1)
    for loss, seeds in runs.items():
        color = COLORS[loss]
        accuracy = [_held(accuracy_points(rows), opts.steps) for rows in seeds]
        lc._band(axes[0], steps, accuracy, color, f"{loss} accuracy")
        formats = [_held(accuracy_points(rows, FORMAT), opts.steps) for rows in seeds]
        if not all(math.isnan(v) for curve in formats for v in curve):
            axes[0].plot(steps, [statistics.fmean(c) for c in zip(*formats)], color=color, ls="--", lw=1,
                         label=f"{loss} format (mean)")  # fmt: skip
        for ax, name in ((axes[1], "completions/mean_length"), (axes[2], "entropy")):
            curves = [_held([(row["step"], row[name]) for row in rows if name in row], opts.steps) for rows in seeds]
            lc._band(ax, steps, curves, color, loss)
        for (name, label), style in zip(CLIP_METRICS[loss], ("-", "--")):
            curves = [[100 * row.get(name, math.nan) for row in rows[: opts.steps]] for rows in seeds]
            mean = [statistics.fmean(column) for column in zip(*curves)]
            axes[3].plot(steps[: len(mean)], mean, color=color, ls=style, lw=1, label=f"{loss}: {label}")
    axes[0].axhline(opts.threshold, color="grey", lw=0.6, ls=":")
    axes[0].set_ylim(0, 1)
    titles = ("reward (each rollout, 128 completions)", "completion length (tokens)", "entropy (nats/token)",
              "% of completion tokens (mean over seeds)")  # fmt: skip
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(f"SmolLM2-135M-Instruct, CISPO vs DAPO, 4 optimizer steps per rollout ({opts.device})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    lc._shrink_png(path)


def _held(points: list[tuple[int, float]], steps: int) -> list[float]:
    """Per step 1..steps, the latest logged value at or before it (a rollout's accuracy holds for its 4 steps)."""
    curve, value, index = [], math.nan, 0
    for step in range(1, steps + 1):
        while index < len(points) and points[index][0] <= step:
            value, index = points[index][1], index + 1
        curve.append(value)
    return curve


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "output" / "bench" / "smollm2_curves", help="run folders")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps a run (a multiple of 4: whole rollouts)")
    parser.add_argument("--threshold", type=float, default=0.8, help="accuracy whose first rollout the table reports")
    parser.add_argument("--report", action="store_true", help="train nothing: table and figure from finished runs")
    parser.add_argument("--smoke", action="store_true", help="the recipe's SMOKE=1 mode, into a temporary folder")
    parser.add_argument("--device", default="2 CPU cores", help="what the runs ran on, for the figure's title")
    parser.add_argument("--png", type=Path, help="where to write the figure (default: <out>/smollm2_curves.png)")
    opts = parser.parse_args(argv)
    if opts.steps < 4 or opts.steps % 4:
        parser.error(f"--steps must be a positive multiple of 4 (whole rollouts of 4 steps); got {opts.steps}")
    if opts.smoke:
        opts.steps = 2  # the smoke mode's own step count
        if opts.out == parser.get_default("out"):
            opts.out = Path(tempfile.mkdtemp(prefix="bench-smollm2-smoke-"))
    return opts


def main(argv=None) -> None:
    opts = parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[list[dict]]] = {}
    results: dict[str, list[dict]] = {}
    for seed in opts.seeds:  # seed-major: a stopped sweep has both losses on the seeds it finished
        for loss in opts.losses:
            folder = opts.out / run_name(loss, seed)
            rows, summary = read_run(folder)
            if summary is None or len(rows) != opts.steps:
                if opts.report:
                    print(f"[curves] {folder.name}: not finished, left out", file=sys.stderr)
                    continue
                train(loss, seed, opts)
                rows, summary = read_run(folder)
                if summary is None or len(rows) != opts.steps:
                    sys.exit(f"[curves] {folder.name} ended without {opts.steps} logged steps; see {folder}.log")
            runs.setdefault(loss, []).append(rows)
            results.setdefault(loss, []).append(summarize(rows, summary, opts.threshold))
    if not results:
        sys.exit(f"[curves] no finished runs in {opts.out}: run without --report first")
    print(table(results, opts))
    png = opts.png or opts.out / "smollm2_curves.png"
    plot(runs, opts, png)
    print(f"\n[curves] runs in {opts.out}; figure {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
