"""Learning curves on the embedded demo: CISPO vs DAPO vs GRPO at num_iterations 1 and 4, several seeds.

    .venv/bin/python bench/learning_curves.py                        # the sweep: 3 losses x 2 num_iterations x 3 seeds
    .venv/bin/python bench/learning_curves.py --options              # plus the CISPO option runs at num_iterations 4
    .venv/bin/python bench/learning_curves.py --options --report     # tables and figure from the finished runs only
    .venv/bin/python bench/learning_curves.py --quick                # smoke test: tiny runs in a temporary folder

Every run trains the demo model (``swift_cispo.demo``) with ``swift_cispo.GRPOTrainer`` on the addition data set
with the ``exact_match`` reward and ``DEMO_HPARAMS``, except for the batch and step count (``--batch``,
``--steps``: sized for the CPU budget) and ``steps_per_generation 1``, so that at ``num_iterations 1`` every step
is on-policy (ratio 1: CISPO and DAPO then compute the same gradient) and at ``num_iterations 4`` each rollout is
reused for 4 consecutive optimizer steps (steps 2-4 off-policy).

Each run writes one JSON line per optimizer step (reward, entropy, clip and importance-weight metrics) to
``<out>/<run>.jsonl``, whose first line holds the run's settings and last line ``{"done": ...}``. A finished run
whose settings match is not run again, so the sweep can be interrupted and resumed, or extended run by run
(``--runs``); run one invocation at a time per ``--out`` (two would write the same unfinished file). Then the
script prints markdown tables (steps to a smoothed mean reward of ``--threshold``, final reward, and the
importance-ratio and clipping metrics that explain them; mean and range over seeds) and draws
``<out>/learning_curves.png`` (reward and entropy, mean and min-max band over seeds).

Runs are sequential in one process with one torch thread: a 2-core machine shared with other work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The compared losses, by their names in swift_cispo's loss registry, with the clip settings each is known by:
# CISPO's cap 5 (ScaleRL, ms-swift, TRL), DAPO's clip-higher (0.2 / 0.28), GRPO's symmetric 0.2.
LOSSES: dict[str, dict] = {
    "cispo": {"loss_type": "cispo", "epsilon_high": 5.0},
    "dapo": {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28},
    "grpo": {"loss_type": "grpo", "epsilon": 0.2, "epsilon_high": 0.2},
}

# CISPO's options, each run at num_iterations 4 to see which one changes CISPO's behaviour under reuse. The
# bounds 1.28 and 0.8 are DAPO's (1 + 0.28, 1 - 0.2): with the token mask they give CISPO PPO's trust region on
# the upper side (A > 0), the lower side (A < 0, needs the offset convention's floor) or both (MiniMax-M1 Eq. 7).
OPTIONS: dict[str, dict] = {
    "cispo_offset": {"loss_type": "cispo", "cispo_clip_convention": "offset", "epsilon_high": 5.0},
    "cispo_mask": {"loss_type": "cispo", "epsilon_high": 5.0, "cispo_token_mask": True},
    "cispo_cap1.28": {"loss_type": "cispo", "epsilon_high": 1.28},
    "cispo_mask_cap1.28": {"loss_type": "cispo", "epsilon_high": 1.28, "cispo_token_mask": True},
    "cispo_mask_floor0.8": {
        "loss_type": "cispo", "cispo_clip_convention": "offset", "epsilon_high": 4.0, "cispo_epsilon_low": 0.2,
        "cispo_token_mask": True,
    },  # fmt: skip
    "cispo_trust_region": {
        "loss_type": "cispo", "cispo_clip_convention": "offset", "epsilon_high": 0.28, "cispo_epsilon_low": 0.2,
        "cispo_token_mask": True,
    },  # fmt: skip
}
OPTION_LABELS = {
    "cispo": "cap 5 (default)",
    "cispo_offset": "`--cispo_clip_convention offset --epsilon_high 5` (ceiling 6)",
    "cispo_mask": "`--cispo_token_mask true` (cap 5)",
    "cispo_cap1.28": "`--epsilon_high 1.28` (cap 1.28)",
    "cispo_mask_cap1.28": "`--epsilon_high 1.28 --cispo_token_mask true`",
    "cispo_mask_floor0.8": (
        "offset, `--cispo_epsilon_low 0.2 --epsilon_high 4 --cispo_token_mask true` (floor 0.8, ceiling 5)"
    ),
    "cispo_trust_region": "offset, `--cispo_epsilon_low 0.2 --epsilon_high 0.28 --cispo_token_mask true` (0.8, 1.28)",
    "dapo": "DAPO (PPO clip 0.2 / 0.28), for reference",
}

# Metrics kept per step: the reward, and what explains it (how far the policy moved from the rollout's policy,
# how much of that movement the loss still trained on, how peaked the policy became).
KEPT_METRICS = (
    "reward", "reward_std", "frac_reward_zero_std", "entropy", "loss", "grad_norm", "learning_rate",
    "completions/mean_length", "cispo_clip_ratio", "cispo_clip_ratio/low", "cispo/is_weight_mean",
    "cispo/is_weight_max", "cispo/is_ratio_max", "cispo/kept_where_ppo_zeroes", "clip_ratio/low_mean",
    "clip_ratio/high_mean", "clip_ratio/region_mean", "is_ratio_max", "rollout/policy_lag", "rollout_is/weight_mean",
    "sampling/sampling_logp_difference/mean",
)  # fmt: skip


@dataclass(frozen=True)
class RunSpec:
    name: str  # loss or option name, e.g. "cispo" or "cispo_mask"
    num_iterations: int
    seed: int
    overrides: dict = field(hash=False)

    @property
    def key(self) -> str:
        return f"{self.name}_ni{self.num_iterations}_s{self.seed}"


def settings(spec: RunSpec, opts) -> dict:
    """The GRPOConfig fields of one run (also the cache key: a finished run with other settings is redone)."""
    from swift_cispo.demo import DEMO_HPARAMS

    return {
        **DEMO_HPARAMS,
        "per_device_train_batch_size": opts.batch,
        "max_steps": opts.steps,
        "steps_per_generation": 1,
        "num_iterations": spec.num_iterations,
        "logging_steps": 1,
        "seed": spec.seed,
        **spec.overrides,
        **opts.set,
    }


def sweep(opts) -> list[RunSpec]:
    specs = [
        RunSpec(loss, ni, seed, LOSSES[loss])
        for ni in opts.num_iterations
        for loss in opts.losses
        for seed in range(opts.seeds)
    ]
    if opts.options:
        specs += [RunSpec(name, 4, seed, OPTIONS[name]) for name in OPTIONS for seed in range(opts.option_seeds)]
    if opts.runs:
        specs = [spec for spec in specs if spec.key in opts.runs]
    return specs


# ----------------------------------------------------------------------------------------------- running
def read_run(path: Path) -> tuple[dict | None, list[dict], bool]:
    """(settings header, per-step rows, finished?) of a run file; missing, empty or cut short: (.., .., False)."""
    if not path.exists():
        return None, [], False
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:  # the last line of a run killed mid-write: the run is redone
            return None, [], False
    if not lines:
        return None, [], False
    header, rows = lines[0].get("settings"), [line for line in lines[1:] if "step" in line]
    return header, rows, any("done" in line for line in lines)


def train(spec: RunSpec, config: dict, path: Path) -> None:
    """Train one run, streaming one JSON line per optimizer step into ``path`` (rewritten from scratch)."""
    from datasets import load_dataset
    from transformers import PrinterCallback, TrainerCallback

    from swift_cispo import GRPOConfig, GRPOTrainer
    from swift_cispo.demo import DEMO_DATASET_PATH, DEMO_MODEL_DIR
    from swift_cispo.rewards import reward_function

    reward_exact_match = reward_function("exact_match")

    with path.open("w") as sink:
        sink.write(json.dumps({"settings": config}) + "\n")

        class Record(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:  # per-step logs; the end-of-training summary has no "loss"
                    row = {"step": state.global_step, **{k: float(logs[k]) for k in KEPT_METRICS if k in logs}}
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()

        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench-curves-") as out_dir:
            args = GRPOConfig(
                output_dir=out_dir, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, **config
            )
            dataset = load_dataset("json", data_files=str(DEMO_DATASET_PATH), split="train")
            trainer = GRPOTrainer(
                model=str(DEMO_MODEL_DIR), reward_funcs=reward_exact_match, args=args, train_dataset=dataset,
                callbacks=[Record()],
            )  # fmt: skip
            trainer.remove_callback(PrinterCallback)
            trainer.train()
            if trainer.use_vllm:  # the next run in this process builds its own engine
                trainer.vllm_generation.shutdown()
        sink.write(json.dumps({"done": True, "wall_s": round(time.perf_counter() - start, 1)}) + "\n")


def run_all(specs: list[RunSpec], opts) -> dict[str, list[dict]]:
    """Train every run not already finished with the same settings; return each finished run's per-step rows.

    With ``--report`` nothing is trained: the runs not finished yet are left out of the tables.
    """
    opts.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for index, spec in enumerate(specs, 1):
        path = opts.out / f"{spec.key}.jsonl"
        config = settings(spec, opts)
        header, rows, done = read_run(path)
        if not (done and header == json.loads(json.dumps(config))):  # JSON round trip: tuples vs lists
            if opts.report:
                continue
            print(f"[bench] {index}/{len(specs)} {spec.key} ...", file=sys.stderr, flush=True)
            train(spec, config, path)
            header, rows, done = read_run(path)
        results[spec.key] = rows
    return results


# ----------------------------------------------------------------------------------------------- summaries
def reward_points(rows: list[dict]) -> list[tuple[int, float]]:
    """(step, reward) where a rollout was scored: every step at num_iterations 1, every 4th at 4."""
    return [(row["step"], row["reward"]) for row in rows if "reward" in row]


def smoothed(points: list[tuple[int, float]], window: int, steps: int) -> list[float]:
    """Per step s = 1..steps: the mean reward of the rollouts scored in the last ``window`` steps (NaN before any)."""
    curve = []
    for step in range(1, steps + 1):
        recent = [reward for at, reward in points if step - window < at <= step]
        curve.append(statistics.fmean(recent) if recent else math.nan)
    return curve


def steps_to(curve: list[float], threshold: float) -> int | None:
    """The first step whose smoothed reward reaches ``threshold`` (None: never)."""
    return next((step for step, value in enumerate(curve, 1) if value >= threshold), None)


def metric_mean(rows: list[dict], name: str, off_policy_only: bool = False, ni: int = 1) -> float:
    """Mean of a logged metric over the run; ``off_policy_only``: over the steps that reuse a rollout."""
    values = [row[name] for row in rows if name in row and not (off_policy_only and (row["step"] - 1) % ni == 0)]
    return statistics.fmean(values) if values else math.nan


def summarize(runs: dict[str, list[dict]], specs: list[RunSpec], opts) -> dict[tuple[str, int], dict]:
    """Per (name, num_iterations): the seeds' steps to threshold, final rewards, smoothed curves and mechanism stats."""
    groups: dict[tuple[str, int], dict] = {}
    for spec in specs:
        if spec.key not in runs:
            continue
        rows = runs[spec.key]
        curve = smoothed(reward_points(rows), opts.window, opts.steps)
        group = groups.setdefault((spec.name, spec.num_iterations), {"curves": [], "to": [], "final": [], "rows": []})
        group["curves"].append(curve)
        group["to"].append(steps_to(curve, opts.threshold))
        group["final"].append(curve[-1])
        group["rows"].append(rows)
    return groups


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = fmt.format(statistics.fmean(values))
    return mean if len(values) == 1 else f"{mean} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _steps(values: list[int | None]) -> str:
    reached = [v for v in values if v is not None]
    text = f"{statistics.median(reached):.0f}" if reached else "never"
    if len(reached) < len(values):
        return f"{text} ({len(reached)}/{len(values)} seeds)"
    return f"{text} ({min(reached)}-{max(reached)})"


HEADER = (
    "final reward | best reward | entropy at the end | max ratio r | A > 0 above the upper bound | "
    "A < 0 below the lower bound | trained where PPO (0.2) gives no gradient |"
)


def print_sweep_table(groups: dict, opts) -> None:
    print(
        f"\nDemo task, {opts.batch} completions per step (num_generations 4), {opts.steps} steps, lr "
        f"{opts.set.get('learning_rate', _lr())} cosine; "
        f"reward smoothed over the rollouts of the last {opts.window} steps; {opts.seeds} seeds: mean (min-max); "
        "the last four columns are means over the off-policy steps (those that reuse a rollout)\n"
    )
    print(f"| loss | num_iterations | steps to reward {opts.threshold} (median, range) | {HEADER}")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, ni), group in groups.items():
        if name in LOSSES:
            print(f"| {name} | {ni} | " + " | ".join(_cells(name, ni, group, opts)) + " |")


def print_options_table(groups: dict, opts) -> None:
    rows = [(name, group) for (name, ni), group in groups.items() if ni == 4 and name in OPTION_LABELS]
    if not any(name in OPTIONS for name, _ in rows):
        return
    print("\nCISPO's options at num_iterations 4 (same settings; mean (min-max) over seeds)\n")
    print(f"| variant | seeds | steps to reward {opts.threshold} | {HEADER}")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, group in rows:
        print(f"| {OPTION_LABELS[name]} | {len(group['curves'])} | " + " | ".join(_cells(name, 4, group, opts)) + " |")


def print_pass_table(groups: dict, opts) -> None:
    """How far the policy gets from the rollout's policy on each pass over a rollout, at num_iterations 4."""
    rows = [(name, group) for (name, ni), group in groups.items() if ni == 4]
    if not rows:
        return
    print("\nBy pass over a rollout (num_iterations 4; pass 1 is on-policy): run means, averaged over seeds\n")
    print("| variant | max ratio r, pass 2 / 3 / 4 | tokens outside PPO's clip range (CISPO: trained anyway; "
          "PPO losses: zeroed), pass 2 / 3 / 4 |")  # fmt: skip
    print("|---|---:|---:|")
    for name, group in rows:
        family = "cispo" if name.startswith("cispo") else "ppo"
        ratio = _MECHANISM[family][0]
        outside = "cispo/kept_where_ppo_zeroes" if family == "cispo" else "clip_ratio/region_mean"
        cells = []
        for metric, fmt in ((ratio, "{:.2f}"), (outside, "{:.3f}")):
            per_pass = [
                statistics.fmean(_pass_mean(rows, metric, index) for rows in group["rows"]) for index in (1, 2, 3)
            ]  # fmt: skip
            cells.append(" / ".join(fmt.format(value) for value in per_pass))
        print(f"| {OPTION_LABELS.get(name, name)} | " + " | ".join(cells) + " |")


def _pass_mean(rows: list[dict], name: str, index: int, ni: int = 4) -> float:
    """Mean of a metric over the steps that are pass ``index + 1`` over their rollout."""
    values = [row[name] for row in rows if name in row and (row["step"] - 1) % ni == index]
    return statistics.fmean(values) if values else math.nan


# Per loss family: the logged metric of the largest ratio, of the upper and lower bound's share of tokens (for
# CISPO: capped / below its floor, masked when the token mask is on; for PPO: clipped, i.e. no gradient), and of
# the tokens trained although PPO clipping would have given them no gradient (PPO itself: none by definition).
_MECHANISM = {
    "cispo": ("cispo/is_ratio_max", "cispo_clip_ratio", "cispo_clip_ratio/low", "cispo/kept_where_ppo_zeroes"),
    "ppo": ("is_ratio_max", "clip_ratio/high_mean", "clip_ratio/low_mean", None),
}


def _cells(name: str, ni: int, group: dict, opts) -> list[str]:
    """steps to threshold, final, best, last entropy, then the mechanism columns (off-policy steps only)."""
    best = [max((v for v in curve if not math.isnan(v)), default=math.nan) for curve in group["curves"]]
    entropy = [
        statistics.fmean([row["entropy"] for row in rows[-opts.window :] if "entropy" in row]) for rows in group["rows"]
    ]
    cells = [_steps(group["to"]), _spread(group["final"]), _spread(best), _spread(entropy)]
    if ni == 1:
        return cells + ["1 (on-policy)", "0", "0", "0"]
    for column, metric in enumerate(_MECHANISM["cispo" if name.startswith("cispo") else "ppo"]):
        values = [0.0] * len(group["rows"]) if metric is None else [
            metric_mean(rows, metric, off_policy_only=True, ni=ni) for rows in group["rows"]
        ]  # fmt: skip
        cells.append(_spread(values, "{:.2f}" if column == 0 else "{:.3f}"))
    return cells


def _lr() -> str:
    from swift_cispo.demo import DEMO_HPARAMS

    return f"{DEMO_HPARAMS['learning_rate']:g}"


# ----------------------------------------------------------------------------------------------- plot
COLORS = {"cispo": "tab:blue", "dapo": "tab:orange", "grpo": "tab:green", "cispo_offset": "tab:purple",
          "cispo_mask": "tab:cyan", "cispo_cap1.28": "tab:brown", "cispo_mask_cap1.28": "tab:red",
          "cispo_mask_floor0.8": "tab:olive", "cispo_trust_region": "tab:pink"}  # fmt: skip


def plot(groups: dict, opts, path: Path) -> None:
    """Reward (top) and entropy (bottom) per panel: num_iterations 1, 4, and CISPO's options at 4 if run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (f"num_iterations {ni}", [(name, n) for (name, n) in groups if n == ni and name in LOSSES])
        for ni in opts.num_iterations
    ]
    option_keys = [(name, 4) for (name, n) in groups if n == 4 and name in OPTIONS]
    if option_keys:
        panels.append(("CISPO options, num_iterations 4", [("cispo", 4), *option_keys, ("dapo", 4)]))
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 5.6), sharex=True, squeeze=False)
    steps = range(1, opts.steps + 1)
    for column, (title, keys) in enumerate(panels):
        reward_ax, entropy_ax = axes[0][column], axes[1][column]
        for key in keys:
            if key not in groups:
                continue
            group, color = groups[key], COLORS.get(key[0])
            _band(reward_ax, steps, group["curves"], color, key[0])
            entropy = [_per_step(rows, "entropy", opts.steps, opts.window) for rows in group["rows"]]
            _band(entropy_ax, steps, entropy, color, key[0])
        reward_ax.axhline(opts.threshold, color="grey", lw=0.6, ls=":")
        reward_ax.set_title(title, fontsize=9)
        reward_ax.set_ylim(0, 1)
        entropy_ax.set_xlabel("optimizer step", fontsize=8)
        if reward_ax.get_legend_handles_labels()[0]:
            reward_ax.legend(fontsize=6, loc="upper left")
    axes[0][0].set_ylabel(f"mean reward (last {opts.window} steps)", fontsize=8)
    axes[1][0].set_ylabel("entropy (nats/token)", fontsize=8)
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    _shrink_png(path)


def _shrink_png(path: Path) -> None:
    """A 256-colour palette: the figure is committed to the docs, and a plot needs no more colours."""
    from PIL import Image

    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=256)
    palette.save(path, optimize=True)


def _per_step(rows: list[dict], name: str, steps: int, window: int) -> list[float]:
    return smoothed([(row["step"], row[name]) for row in rows if name in row], window, steps)


def _band(ax, steps, curves: list[list[float]], color, label: str) -> None:
    """Mean over seeds with a min-max band."""
    columns = list(zip(*curves))
    mean = [statistics.fmean(c) if not any(math.isnan(v) for v in c) else math.nan for c in columns]
    ax.plot(steps, mean, color=color, lw=1.2, label=f"{label} ({len(curves)} seeds)")
    if len(curves) > 1:
        ax.fill_between(steps, [min(c) for c in columns], [max(c) for c in columns], color=color, alpha=0.2, lw=0)


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "output" / "bench" / "learning_curves", help="run files")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=256, help="completions per step (64 prompts x 4)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--num_iterations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--options", action="store_true", help="also run CISPO's options at num_iterations 4")
    parser.add_argument("--option_seeds", type=int, default=3)
    parser.add_argument("--runs", nargs="+", help="only these runs, by file name without .jsonl (e.g. cispo_ni4_s0)")
    parser.add_argument("--threshold", type=float, default=0.5, help="smoothed reward whose first step is reported")
    parser.add_argument("--window", type=int, default=20, help="smoothing window in optimizer steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a GRPOConfig field in every run (use another --out: run files are named by run)")
    parser.add_argument("--png", type=Path, help="where to write the figure (default: <out>/learning_curves.png)")
    parser.add_argument("--report", action="store_true", help="train nothing: tables and figure from the finished runs")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 8 steps of 32, in a temporary folder")
    opts = parser.parse_args(argv)
    opts.set = dict(_parse_setting(item) for item in opts.set)
    if opts.quick:
        opts.steps, opts.batch, opts.seeds, opts.option_seeds, opts.window = 8, 32, 1, 1, 4
        if opts.out == parser.get_default("out"):
            opts.out = Path(tempfile.mkdtemp(prefix="bench-curves-quick-"))
    return opts


def _parse_setting(item: str) -> tuple[str, object]:
    """``"learning_rate=5e-4"`` -> ("learning_rate", 0.0005): a value is read as JSON when it parses, else as text."""
    key, _, text = item.partition("=")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        return key, text


def main(argv=None) -> None:
    opts = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    specs = sweep(opts)
    started = time.perf_counter()
    runs = run_all(specs, opts)
    groups = summarize(runs, specs, opts)
    print_sweep_table(groups, opts)
    print_options_table(groups, opts)
    print_pass_table(groups, opts)
    png = opts.png or opts.out / "learning_curves.png"
    plot(groups, opts, png)
    print(f"\nruns in {opts.out}; figure {png}; {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
