"""What the `swift rlhf` command costs over bare TRL: train_runtime of the CLI vs a plain trl.GRPOTrainer script.

    .venv/bin/python bench/cli_vs_trl.py [--reps 3] [--steps 30] [--quick]

Both sides train the same randomly initialised 4-layer Qwen2-shaped model (built once, saved), on the
demo's prompts, with the same reward, generation settings, seed and gradient checkpointing off:
8 generations per prompt, gradient accumulation 2, num_iterations 2, loss_type cispo with
epsilon_high 5. The CLI runs as a user runs it (a subprocess, with its metrics file, curves and
progress bar on); TRL runs in a subprocess too, as a ten-line script with its own progress bar.
Each side's number is transformers' ``train_runtime`` (the training loop, without start-up).

The runs alternate ABBA (cli, trl, trl, cli, ...) so that drift of the machine lands on both alike;
the ratio is taken per repetition from two adjacent runs and reported as median and range.
Run it on a quiet machine: on 2 shared cores anything else running is in the number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REWARD = '''
def digit_share(completions, **kwargs):
    """Share of digits in each completion: dense, so a random model's groups carry non-zero advantages."""
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]
'''

PLUGIN = REWARD + '''

from swift_cispo.rewards import ORM, orms


class DigitShare(ORM):
    def __call__(self, completions, **kwargs):
        return digit_share(completions)


orms["digit_share"] = DigitShare
'''

TRL_SCRIPT = REWARD + '''

import json, sys
from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer

model, data, out, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
args = GRPOConfig(output_dir=out, **settings)
trainer = GRPOTrainer(model=model, reward_funcs=digit_share, args=args,
                      train_dataset=load_dataset("json", data_files=data, split="train"))
result = trainer.train()
print("TRAIN_RUNTIME", result.metrics["train_runtime"])
print("REWARDS", json.dumps([h["reward"] for h in trainer.state.log_history if "reward" in h]))
'''


def settings(opts) -> dict:
    """The training settings both sides get (TRL field names; the CLI takes the same as flags)."""
    return dict(
        per_device_train_batch_size=opts.batch, num_generations=8, gradient_accumulation_steps=2, num_iterations=2,
        max_completion_length=8, max_steps=opts.steps, learning_rate=1e-4, beta=0.0, temperature=1.0,
        loss_type="cispo", epsilon_high=5.0, bf16=False, use_cpu=True, gradient_checkpointing=False, seed=0,
        logging_steps=1, save_strategy="no", report_to="none",
    )  # fmt: skip


def run_cli(model: Path, data: str, work: Path, opts, index: int) -> tuple[float, list[float]]:
    out = work / f"cli-{index}"
    flags = [t for k, v in settings(opts).items() for t in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))]
    cmd = [sys.executable, "-m", "swift_cispo", "rlhf", "--model", str(model), "--dataset", data, "--reward_funcs", "digit_share",
           "--external_plugins", str(work / "plugin.py"), "--output_dir", str(out), *flags]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=work)
    if result.returncode != 0:
        raise SystemExit(f"swift rlhf failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
    return next(r["train_runtime"] for r in records if "train_runtime" in r), [r["reward"] for r in records if "reward" in r]


def run_trl(model: Path, data: str, work: Path, opts, index: int) -> tuple[float, list[float]]:
    cmd = [sys.executable, str(work / "bare_trl.py"), str(model), data, str(work / f"trl-{index}"), json.dumps(settings(opts))]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=work)
    if result.returncode != 0:
        raise SystemExit(f"bare TRL failed:\n{result.stderr[-3000:]}")
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in result.stdout.splitlines() if " " in line}
    return float(lines["TRAIN_RUNTIME"]), json.loads(lines["REWARDS"])


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="ABBA repetitions (each runs both sides once)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="per-device batch (completions per micro-batch)")
    parser.add_argument("--quick", action="store_true", help="1 repetition of 4 steps: checks the script runs")
    opts = parser.parse_args()
    if opts.quick:
        opts.reps, opts.steps = 1, 4

    from swift_cispo.demo import DEMO_DATASET_PATH
    from swift_cispo.demo.tiny import save_random_model

    with tempfile.TemporaryDirectory(prefix="cli-vs-trl-") as tmp:
        work = Path(tmp)
        model = save_random_model(work / "model", hidden=128, layers=4, max_positions=128)
        (work / "plugin.py").write_text(textwrap.dedent(PLUGIN))
        (work / "bare_trl.py").write_text(textwrap.dedent(TRL_SCRIPT))
        times: dict[str, list[float]] = {"cli": [], "trl": []}
        ratios, gap = [], 0.0
        for rep in range(opts.reps):
            order = ("cli", "trl") if rep % 2 == 0 else ("trl", "cli")
            now, rewards = {}, {}
            for side in order:
                run = run_cli if side == "cli" else run_trl
                now[side], rewards[side] = run(model, str(DEMO_DATASET_PATH), work, opts, rep)
                times[side].append(now[side])
                print(f"[bench] rep {rep + 1}/{opts.reps} {side:3s} train_runtime {now[side]:.2f} s", file=sys.stderr)
            ratios.append(now["cli"] / now["trl"])
            # same model, data, seed and settings: both sides must sample and score the same rollouts
            if len(rewards["cli"]) != len(rewards["trl"]) or not rewards["cli"]:
                raise SystemExit(f"the two sides logged different numbers of rewards: {rewards}")
            gap = max(gap, *(abs(a - b) for a, b in zip(rewards["cli"], rewards["trl"])))
    print(f"\n{opts.steps} steps, batch {opts.batch}, 8 generations, accumulation 2, num_iterations 2, gradient checkpointing off")
    print("| side | train_runtime (s), per repetition | median |")
    print("|---|---|---|")
    for side, label in (("cli", "`swift rlhf` (metrics file, curves, progress bar)"), ("trl", "bare `trl.GRPOTrainer`")):
        print(f"| {label} | {', '.join(f'{t:.2f}' for t in times[side])} | {statistics.median(times[side]):.2f} |")
    print(f"\nratio cli / trl: median {statistics.median(ratios):.3f} (range {min(ratios):.3f} - {max(ratios):.3f})")
    print(f"largest gap between the two sides' logged rewards: {gap:g} (0: they did the same work)")


if __name__ == "__main__":
    main()
