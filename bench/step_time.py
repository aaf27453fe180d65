"""Step time: swift_cispo.GRPOTrainer (loss_type cispo) vs bare trl.GRPOTrainer (loss_type="cispo"), side by side.

    .venv/bin/python bench/step_time.py [--reps 24] [--steps 16] [--warmup 4] [--quick] [--profile]

Both trainers get the same randomly initialised Qwen2-shaped model (built from a config, saved once), the
same addition prompts, the same reward, the same generation settings and the same seed. With
``steps_per_generation == gradient_accumulation_steps`` (the default) TRL's token count is exact, so both
compute the same gradients and sample the same completions: the script checks that their logged rewards and
gradient norms agree, i.e. that the times compare equal work.

The runs alternate in one process, ABBA (ours, TRL, TRL, ours, ...), so slow drift of the machine lands on
both sides alike. Each run trains ``--steps`` optimizer steps from a fresh trainer; after the first
``--warmup`` steps its time per step is the median over its generation cycles (one rollout and the steps that
reuse it: the unit of equal work), so a burst from another process does not become the number. The ratio
ours / TRL is taken per repetition, from the two adjacent runs, and reported as median, quartiles and range.

One torch thread: the numbers measure Python and framework overhead honestly on a shared 2-core machine.
``--profile`` also runs one cProfile'd run of each trainer and prints where their times differ.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TRAINERS = ("ours", "trl")
LABELS = {"ours": "swift_cispo.GRPOTrainer (cispo)", "trl": "trl.GRPOTrainer (cispo)"}


def build_model(path: Path, hidden: int, layers: int) -> None:
    """A random Qwen2 of the demo's family (character tokenizer, head_dim 64), saved to ``path``."""
    from swift_cispo.demo.tiny import save_random_model

    save_random_model(path, hidden, layers, max_positions=128)


def shared_settings(opts) -> dict:
    """GRPOConfig fields both trainers get. bf16 is explicit: TRL's default (None -> True) would autocast on CPU.

    ``opts.device`` "cuda" (bench/gpu_checks.py) trains on the GPU in bf16 autocast; ``opts.extra`` adds fields.
    """
    on_gpu = getattr(opts, "device", "cpu") == "cuda"
    settings = dict(
        per_device_train_batch_size=opts.batch, num_generations=opts.generations, max_completion_length=opts.completion,
        steps_per_generation=opts.spg, num_iterations=opts.num_iterations, gradient_accumulation_steps=opts.grad_accum,
        learning_rate=1e-4, beta=0.0, temperature=1.0, epsilon_high=5.0, loss_type="cispo", bf16=on_gpu,
        use_cpu=not on_gpu, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
    )  # fmt: skip
    settings.update(getattr(opts, "extra", {}))
    return settings


def reward_digit_share(completions: list[str], **kwargs) -> list[float]:
    """Share of digits in each completion: dense, so a random model's groups get non-zero advantages and
    both trainers really update (exact match would be 0 everywhere and every loss 0)."""
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


def make_trainer(kind: str, model: Path, steps: int, opts, callbacks: list):
    from datasets import load_dataset
    from transformers import PrinterCallback

    from swift_cispo.demo import DEMO_DATASET_PATH

    if kind == "ours":
        from swift_cispo import GRPOConfig, GRPOTrainer
    else:
        from trl import GRPOConfig, GRPOTrainer
    output_dir = tempfile.mkdtemp(prefix=f"{kind}-", dir=opts.work)  # removed with the work folder
    args = GRPOConfig(output_dir=output_dir, max_steps=steps, **shared_settings(opts))
    dataset = load_dataset("json", data_files=str(DEMO_DATASET_PATH), split="train")
    trainer = GRPOTrainer(
        model=str(model), reward_funcs=reward_digit_share, args=args, train_dataset=dataset, callbacks=callbacks
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm prints every log line otherwise
    if kind == "ours":
        # The trainers' own overhead is what is compared, on equal work: ours takes TRL's fused LM head too. On a CPU
        # it would otherwise take the model's own head (a third faster there: bench/real_model_throughput.py), which
        # rounds differently, and the rewards and gradient norms would no longer match bit for bit.
        import functools

        from trl import GRPOTrainer as TRLGRPOTrainer

        trainer._get_per_token_logps_and_entropies = functools.partial(TRLGRPOTrainer._get_per_token_logps_and_entropies, trainer)
    return trainer


def timed_run(kind: str, model: Path, steps: int, opts) -> tuple[list[float], list[tuple[float, float]]]:
    """Train ``steps`` steps from a fresh trainer; return the wall clock at each step's end and the logged
    (reward, grad_norm) of every step, the evidence that both trainers did the same work."""
    from transformers import TrainerCallback, set_seed

    ends: list[float] = []
    logged: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        # Step end to step end: our trainer generates in get_batch_samples, before on_step_begin, TRL's inside
        # the training step, so only the interval between step ends covers the same work for both.
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "grad_norm" in logs:
                logged.append((logs.get("reward", float("nan")), float(logs["grad_norm"])))

    trainer = make_trainer(kind, model, steps, opts, [Clock()])
    set_seed(0)
    trainer.train()
    del trainer
    gc.collect()
    return ends, logged


def seconds_per_step(ends: list[float], warmup: int, cycle: int) -> float:
    """Median over the generation cycles after the first ``warmup`` steps of the cycle's time, per step.

    A cycle (one generation plus the steps that reuse it) is the unit of equal work; the median rather than the
    mean keeps a burst from another process on a shared machine out of the number.
    """
    marks = ends[warmup - 1 :: cycle]
    return statistics.median(b - a for a, b in zip(marks, marks[1:])) / cycle


def measure(model: Path, opts) -> tuple[dict[str, list[float]], list[float], float]:
    """ABBA-alternated runs. Returns s/step per run for each trainer, the per-repetition ratios ours/TRL, and
    the largest relative difference between the two trainers' logged rewards and gradient norms (0: same work)."""
    per_run: dict[str, list[float]] = {kind: [] for kind in TRAINERS}
    ratios, worst_gap = [], 0.0
    for rep in range(opts.reps):
        order = TRAINERS if rep % 2 == 0 else TRAINERS[::-1]
        result = {}
        for kind in order:
            ends, logged = timed_run(kind, model, opts.steps, opts)
            result[kind] = (seconds_per_step(ends, opts.warmup, opts.cycle), logged)
            per_run[kind].append(result[kind][0])
            milliseconds = result[kind][0] * 1000
            print(f"[bench] rep {rep + 1}/{opts.reps} {kind:4s} {milliseconds:7.1f} ms/step", file=sys.stderr)
        ratios.append(result["ours"][0] / result["trl"][0])
        worst_gap = max(worst_gap, relative_gap(result["ours"][1], result["trl"][1]))
    return per_run, ratios, worst_gap


def relative_gap(ours: list[tuple[float, float]], trl: list[tuple[float, float]]) -> float:
    """Largest relative difference between matching logged values (inf if the logs differ in length or in
    which values are NaN: a step without a rollout logs no reward, on both sides alike)."""
    if len(ours) != len(trl) or not ours:
        return float("inf")
    gaps = [0.0]
    for a, b in (pair for row_ours, row_trl in zip(ours, trl) for pair in zip(row_ours, row_trl)):
        if math.isnan(a) or math.isnan(b):
            gaps.append(0.0 if math.isnan(a) and math.isnan(b) else math.inf)
        else:
            gaps.append(abs(a - b) / max(abs(a), abs(b), 1e-12))
    return max(gaps)


def profile(model: Path, opts, top: int) -> None:
    """cProfile one run of each trainer; print the functions whose cumulative time per step differs most."""
    per_step = {}
    for kind in TRAINERS:
        profiler = cProfile.Profile()
        profiler.enable()
        timed_run(kind, model, opts.steps, opts)
        profiler.disable()
        stats = pstats.Stats(profiler, stream=io.StringIO()).stats
        per_step[kind] = {_name(func): row[3] / opts.steps for func, row in stats.items()}  # row[3]: cumulative
    names = set(per_step["ours"]) | set(per_step["trl"])
    delta = sorted(names, key=lambda n: -abs(per_step["ours"].get(n, 0.0) - per_step["trl"].get(n, 0.0)))
    print("\ncProfile, one run each, cumulative ms per step, largest differences first (profiler overhead included)\n")
    print("| function | ours | TRL | ours - TRL |")
    print("|---|---:|---:|---:|")
    for name in delta[:top]:
        ours, trl = per_step["ours"].get(name, 0.0) * 1000, per_step["trl"].get(name, 0.0) * 1000
        print(f"| `{name}` | {ours:.2f} | {trl:.2f} | {ours - trl:+.2f} |")


def _name(func: tuple) -> str:
    filename, line, name = func
    for marker in ("site-packages/", "swift_cispo/", "bench/"):  # short, readable paths
        if marker in filename:
            rest = filename.split(marker, 1)[1]
            filename = rest if marker == "site-packages/" else marker + rest
            break
    return f"{filename}:{line}({name})"


def print_table(per_run: dict[str, list[float]], ratios: list[float], gap: float, opts) -> None:
    steps_measured = opts.steps - opts.warmup
    print(
        f"\nrandom Qwen2 (hidden {opts.hidden}, {opts.layers} layers, demo tokenizer); {opts.batch * opts.grad_accum} "
        f"completions of up to {opts.completion} tokens per optimizer step, num_generations {opts.generations}, "
        f"gradient_accumulation_steps {opts.grad_accum}, steps_per_generation {opts.spg}, num_iterations "
        f"{opts.num_iterations}; {opts.reps} ABBA repetitions, each run timed over steps "
        f"{opts.warmup + 1}..{opts.steps} ({steps_measured} steps, the median of its {steps_measured // opts.cycle} "
        f"generation cycles); 1 torch thread\n"
    )
    print("| trainer | median s/step | min | max | runs |")
    print("|---|---:|---:|---:|---:|")
    for kind in TRAINERS:
        times = per_run[kind]
        median, fastest, slowest = statistics.median(times), min(times), max(times)
        print(f"| {LABELS[kind]} | {median:.4f} | {fastest:.4f} | {slowest:.4f} | {len(times)} |")
    low, high = _quartiles(ratios)
    print(
        f"\n| ratio ours / TRL (paired per repetition) | median | 25%-75% | min-max |\n|---|---:|---:|---:|\n"
        f"| s/step | **{statistics.median(ratios):.3f}** | {low:.3f}-{high:.3f} | {min(ratios):.3f}-{max(ratios):.3f} |"
    )
    print(f"\nsame work: largest relative difference of the logged rewards and grad norms, ours vs TRL: {gap:.1e}")


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return quartiles[0], quartiles[2]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=24, help="ABBA repetitions (each runs both trainers once)")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="steps excluded at the start of each run")
    parser.add_argument("--batch", type=int, default=64, help="per_device_train_batch_size (completions)")
    parser.add_argument("--generations", type=int, default=8, help="num_generations")
    parser.add_argument("--completion", type=int, default=16, help="max_completion_length")
    # The defaults keep TRL's token count exact (steps_per_generation == gradient_accumulation_steps), so the two
    # trainers compute the same gradients and so the same rollouts: the run checks that, and times equal work.
    parser.add_argument("--spg", type=int, default=1, help="steps_per_generation, in micro-batches")
    parser.add_argument("--grad_accum", type=int, default=1, help="gradient_accumulation_steps")
    parser.add_argument("--num_iterations", type=int, default=2, help="2: every other step reuses the rollout")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 repetitions of 4 steps, small batch")
    parser.add_argument("--profile", action="store_true", help="also cProfile one run of each, print the gaps")
    parser.add_argument("--profile_top", type=int, default=15)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.reps, opts.steps, opts.warmup, opts.batch, opts.completion = 2, 4, 2, 16, 8
    opts.cycle = cycle = max(opts.spg * opts.num_iterations // opts.grad_accum, 1)  # optimizer steps per generation
    if opts.warmup < 1 or opts.warmup % cycle or opts.steps % cycle or opts.steps - opts.warmup < cycle:
        parser.error(f"--warmup and --steps must be multiples of the steps per rollout ({cycle}), 0 < warmup < steps")
    return opts


def main(argv=None) -> None:
    opts = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="bench-step-") as work:
        opts.work = work
        model = Path(work) / "model"
        build_model(model, opts.hidden, opts.layers)
        for kind in TRAINERS:  # first-call costs (imports, lazy inits) in neither side's numbers
            timed_run(kind, model, opts.warmup, opts)
        per_run, ratios, gap = measure(model, opts)
        print_table(per_run, ratios, gap, opts)
        if opts.profile:
            profile(model, opts, opts.profile_top)


if __name__ == "__main__":
    main()
