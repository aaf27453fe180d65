"""The project's GPU checks, as one short script for a lent GPU machine (one GPU, no network).

    python bench/gpu_checks.py [--out DIR] [--budget_s 420] [--quick]

Four measurements, each printed as a table as soon as it is done (and appended to ``DIR/gpu_checks.md``);
a section that fails prints its error and the next one runs:

1. **The chip**: name, bf16 matrix-product throughput (8192^3, the peak MFU is measured against) and
   device-to-device copy bandwidth (the floor of decoding, which reads every weight once per token).
2. **bf16 step time, ours vs bare TRL**: a randomly initialised Qwen2.5-0.5B-shaped model (24 layers,
   hidden 896, 14 heads / 2 KV heads, intermediate 4864, vocabulary 151936, tied embeddings) trained with
   ``swift_cispo.GRPOTrainer`` (cispo) and ``trl.GRPOTrainer`` (loss_type cispo) on the same settings, HF
   generate, completions forced to full length; runs alternate ABBA. Each step is split into rollout
   (generation, rewards, old log-probs: TRL's ``_generate_and_score_completions``) and training, and the
   training phase's model-FLOP utilisation is 6 x parameters x tokens over its time and the measured peak.
3. **Host syncs per optimizer step**: ``torch.cuda.set_sync_debug_mode`` reports every operation that makes
   the host wait for the GPU; counted over the steps that reuse a rollout (no generation in them, so both
   trainers do the same work), with the lines of code that sync most.
4. **Weight transport**: the two-member group of ``swift_cispo.generation.collective`` (what server mode
   uses between the trainer and ``swift rollout``) carries the model's bf16 weights from one process to
   another, NCCL and gloo, timed and checked bit-exact. One GPU holds both ends: NCCL refuses two ranks on
   one device, so on a one-GPU machine its row says so rather than inventing a number.

Needs trl, datasets (and what they need) next to the machine's torch/transformers; everything else is
built from configs on the machine. ``--quick`` runs a tiny model on whatever device exists (the CPU check
of this script).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Qwen2.5-0.5B's published shape (config.json of Qwen/Qwen2.5-0.5B): the model size users start GRPO with.
QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, head_dim=64, vocab_size=151936)  # fmt: skip
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, head_dim=64, vocab_size=1024)  # fmt: skip


class Report:
    """Print a section and append it to the markdown file as soon as it is known."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(text + "\n")


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def chip(report: Report, device, quick: bool) -> dict:
    """Name, bf16 matmul TFLOP/s and copy bandwidth: the peaks the other sections are read against."""
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    size = 1024 if quick else 8192
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    reps = 3 if quick else 20
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    tflops = 2 * size**3 * reps / (time.perf_counter() - start) / 1e12
    source = torch.empty(256 * 2**20 if not quick else 2**22, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        target.copy_(source)
    synchronize(device)
    bandwidth = 2 * source.numel() * 4 * reps / (time.perf_counter() - start) / 1e9  # bytes read + written
    versions = f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else "")
    report(f"## 1. The chip\n\n| device | software | {str(dtype).removeprefix('torch.')} matmul {size}^3 | copy bandwidth |")
    report("|---|---|---:|---:|")
    report(f"| {name} | {versions} | {tflops:.0f} TFLOP/s | {bandwidth:.0f} GB/s |\n")
    return {"name": name, "tflops": tflops, "bandwidth_gbs": bandwidth}


def build_model(path: Path, shape: dict, max_positions: int) -> int:
    """A random Qwen2 of ``shape`` with the demo's byte tokenizer, saved in bf16; returns its parameter count.

    The tokenizer knows 259 ids; the larger vocabulary only sizes the embedding and LM head as in the real
    model. Completions are forced to full length, so which ids are sampled does not change the work.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from swift_cispo.demo.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        **shape, max_position_embeddings=max_positions, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, dtype="bfloat16",
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialising 0.5B on the CPU takes long
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.model_max_length = max_positions
    tokenizer.save_pretrained(path)
    count = sum(p.numel() for p in model.parameters())  # tied: the embedding is counted once, as the LM head
    del model
    return count


def step_options(quick: bool, device) -> argparse.Namespace:
    """The settings of sections 2 and 3, in the shape bench/step_time.py's helpers take."""
    opts = argparse.Namespace(
        batch=32, generations=8, completion=128, spg=1, grad_accum=1, num_iterations=2, steps=8, warmup=2, reps=2,
        device=device.type,
    )  # fmt: skip
    if quick:
        opts.batch, opts.completion, opts.steps, opts.reps = 8, 8, 4, 1
    opts.cycle = max(opts.spg * opts.num_iterations // opts.grad_accum, 1)
    # Forced full-length completions: the random model's lengths would otherwise differ between the two trainers'
    # samples (different RNG use), and then they would not do the same work.
    opts.extra = {"generation_kwargs": {"min_new_tokens": opts.completion}}
    return opts


class PhaseClock:
    """Wall time of each rollout (TRL's ``_generate_and_score_completions``) and of each optimizer step."""

    def __init__(self, trainer, device):
        from transformers import TrainerCallback

        self.rollouts: list[float] = []
        self.ends: list[float] = []
        original = trainer._generate_and_score_completions
        clock = self

        def timed(*args, **kwargs):
            synchronize(device)
            start = time.perf_counter()
            result = original(*args, **kwargs)
            synchronize(device)
            clock.rollouts.append(time.perf_counter() - start)
            return result

        trainer._generate_and_score_completions = timed

        class StepEnd(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                synchronize(device)
                clock.ends.append(time.perf_counter())

        trainer.add_callback(StepEnd())


def timed_step_run(kind: str, model: Path, opts, device) -> dict:
    """Train ``opts.steps`` steps from a fresh trainer; seconds per step and per phase after the warm-up."""
    import gc

    from transformers import set_seed

    import step_time

    trainer = step_time.make_trainer(kind, model, opts.steps, opts, [])
    clock = PhaseClock(trainer, device)
    set_seed(0)
    trainer.train()
    rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    del trainer
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    marks = clock.ends[opts.warmup - 1 :: opts.cycle]
    per_step = statistics.median(b - a for a, b in zip(marks, marks[1:])) / opts.cycle
    rollouts_after_warmup = clock.rollouts[opts.warmup // opts.cycle :]
    rollout = statistics.median(rollouts_after_warmup) / opts.cycle
    return {"step": per_step, "rollout": rollout, "train": per_step - rollout, "rewards": rewards}


def step_time_section(report: Report, model: Path, params: int, peak: dict, opts, device) -> dict:
    import step_time

    step_time.TRAINERS  # the two labels below
    per_run = {kind: [] for kind in step_time.TRAINERS}
    for kind in step_time.TRAINERS:  # first-call costs (imports, CUDA context, kernels) in neither side's numbers
        timed_step_run(kind, model, argparse.Namespace(**{**vars(opts), "steps": opts.warmup + opts.cycle}), device)
    for rep in range(opts.reps):
        order = step_time.TRAINERS if rep % 2 == 0 else step_time.TRAINERS[::-1]
        for kind in order:
            per_run[kind].append(timed_step_run(kind, model, opts, device))
            print(f"[gpu_checks] rep {rep + 1}/{opts.reps} {kind}: {per_run[kind][-1]['step']:.3f} s/step", flush=True)
    completions = opts.batch * opts.grad_accum  # per optimizer step
    prompt_tokens = 8  # the demo's prompts ("12+7=") are 5-6 tokens; padded batch, about this
    train_tokens = completions * (prompt_tokens + opts.completion)
    train_flops = 6 * params * train_tokens  # forward + backward; attention's own FLOPs are small at these lengths
    report(
        f"## 2. bf16 step time, ours vs bare TRL\n\nrandom Qwen2.5-0.5B shape ({params / 1e6:.0f}M parameters), "
        f"{completions} completions of exactly {opts.completion} tokens per optimizer step, num_generations "
        f"{opts.generations}, num_iterations {opts.num_iterations} (a rollout every {opts.cycle} steps), HF generate, "
        f"bf16 autocast, gradient checkpointing on (both trainers' default); {opts.reps} ABBA repetitions of {opts.steps} steps, the first {opts.warmup} excluded, "
        f"medians. Training MFU = 6 x {params / 1e6:.0f}M x {train_tokens} tokens / training time / "
        f"{peak['tflops']:.0f} TFLOP/s (section 1).\n"
    )
    report("| trainer | s/step | rollout s/step | training s/step | training MFU |")
    report("|---|---:|---:|---:|---:|")
    medians = {}
    for kind in step_time.TRAINERS:
        runs = per_run[kind]
        medians[kind] = {key: statistics.median(run[key] for run in runs) for key in ("step", "rollout", "train")}
        mfu = train_flops / max(medians[kind]["train"], 1e-9) / (peak["tflops"] * 1e12)
        m = medians[kind]
        report(f"| {step_time.LABELS[kind]} | {m['step']:.3f} | {m['rollout']:.3f} | {m['train']:.3f} | {mfu:.1%} |")
    ratio = medians["ours"]["step"] / medians["trl"]["step"]
    same = all(a["rewards"] == b["rewards"] for a, b in zip(per_run["ours"], per_run["trl"]))
    report(f"\nratio ours / TRL, s/step: **{ratio:.3f}**; logged rewards identical on both sides: {same}")
    decode_floor = params * 2 * opts.completion / (peak["bandwidth_gbs"] * 1e9)  # every bf16 weight read per token
    report(
        f"decoding floor from weight bandwidth: {decode_floor * 1000:.1f} ms per rollout of {opts.completion} tokens "
        f"(measured rollout: {medians['ours']['rollout'] * opts.cycle * 1000:.0f} ms)\n"
    )
    return medians


def host_sync_section(report: Report, model: Path, opts, device) -> None:
    """Count synchronising CUDA calls inside the optimizer steps that reuse a rollout."""
    import torch
    from transformers import TrainerCallback, set_seed

    import step_time

    if device.type != "cuda":
        report("## 3. Host syncs per optimizer step\n\nskipped: no CUDA device (the sync debug mode is CUDA's)\n")
        return

    class SyncCounter(TrainerCallback):
        def __init__(self):
            self.counts: list[int] = []
            self.sites: collections.Counter = collections.Counter()
            self._record = None

        def on_step_begin(self, args, state, control, **kwargs):
            self._catcher = warnings.catch_warnings(record=True)
            self._record = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.set_sync_debug_mode("default")
            self._catcher.__exit__(None, None, None)
            syncs = [w for w in self._record if "synchroniz" in str(w.message)]
            self.counts.append(len(syncs))
            if state.global_step % opts.cycle == 0 and state.global_step > opts.warmup:  # a step that reused a rollout
                self.sites.update(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)

    results = {}
    for kind in step_time.TRAINERS:
        counter = SyncCounter()
        trainer = step_time.make_trainer(kind, model, opts.steps, opts, [counter])
        set_seed(0)
        trainer.train()
        del trainer
        reuse = [n for step, n in enumerate(counter.counts, start=1) if step % opts.cycle == 0 and step > opts.warmup]
        results[kind] = (reuse, counter.sites)
    report(
        "## 3. Host syncs per optimizer step\n\n`torch.cuda.set_sync_debug_mode('warn')` over the optimizer steps that "
        "reuse a rollout (no generation in them: the same work in both trainers), one micro-batch per step; "
        "logging_steps 1, so each step also logs.\n"
    )
    report("| trainer | syncs per reuse step (each step) | where most (file:line, count over those steps) |")
    report("|---|---|---|")
    for kind, (reuse, sites) in results.items():
        top = ", ".join(f"`{site}` {n}" for site, n in sites.most_common(5))
        report(f"| {step_time.LABELS[kind]} | {reuse} | {top} |")
    report("")


def _transport_worker(rank: int, backend: str, port: int, model: str, queue) -> None:
    import torch
    from safetensors.torch import load_file

    from swift_cispo.generation import collective

    try:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        weights = load_file(str(Path(model) / "model.safetensors"), device=device)
        named = sorted(weights.items())
        group = collective.open_group("127.0.0.1", port, rank, backend, timeout_s=120)
        metadata = collective.describe(named)
        on = device if backend == "nccl" else "cpu"
        for repeat in range(2):  # the first carries NCCL's set-up; the second is the number
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            if rank == collective.TRAINER_RANK:
                for _, tensor in named:  # what the client does: to the group's device, then one broadcast each
                    collective.broadcast(group, tensor.detach().to(on).contiguous())
                received = None
            else:
                received = [(name, tensor.to(device)) for name, tensor in collective.receive(group, metadata, on)]
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        exact = None
        if received is not None:
            exact = all(torch.equal(tensor, weights[name]) for name, tensor in received)
        size = sum(t.numel() * t.element_size() for _, t in named)
        queue.put((rank, "ok", seconds, size, exact))
    except Exception as error:  # noqa: BLE001 - the row reports it
        queue.put((rank, "error", f"{type(error).__name__}: {str(error).splitlines()[0][:200]}", 0, None))


def transport_section(report: Report, model: Path, step_seconds: float | None) -> None:
    import socket

    import torch.multiprocessing as mp

    report("## 4. Weight transport (server mode's trainer -> `swift rollout` group)\n")
    report("| backend | bytes | seconds (2nd update) | GB/s | bit-exact | share of a step |")
    report("|---|---:|---:|---:|---|---:|")
    context = mp.get_context("spawn")
    for backend in ("nccl", "gloo"):
        if backend == "nccl" and not __import__("torch").cuda.is_available():
            report("| nccl | - | - | - | - | no CUDA device |")
            continue
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        queue = context.Queue()
        processes = [context.Process(target=_transport_worker, args=(rank, backend, port, str(model), queue)) for rank in (1, 0)]
        for process in processes:
            process.start()
        results = {}
        try:
            for _ in processes:
                rank, status, seconds, size, exact = queue.get(timeout=240)
                results[rank] = (status, seconds, size, exact)
        except Exception:  # noqa: BLE001 - a hung group: report and move on
            results.setdefault(0, ("error", "no answer within 240 s", 0, None))
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        errors = [value[1] for value in results.values() if value[0] == "error"]
        if errors:
            report(f"| {backend} | - | - | - | - | failed: {errors[0]} |")
            continue
        _, seconds, size, _ = results[0]
        exact = results[1][3]
        share = f"{seconds / step_seconds:.1%}" if step_seconds else "-"
        report(f"| {backend} | {size / 1e9:.2f} GB | {seconds:.3f} | {size / seconds / 1e9:.1f} | {exact} | {share} |")
    report("")


def profile_section(report: Report, model: Path, opts) -> None:
    """cProfile one run of each trainer: the functions both call whose time per step differs most (the
    same work done at different cost), then those only one of them calls."""
    import cProfile
    import pstats

    import step_time

    steps = opts.warmup + 2 * opts.cycle
    for kind in step_time.TRAINERS:  # imports and first-call costs out of the profile
        step_time.timed_run(kind, model, opts.cycle, opts)
    per_step = {}
    for kind in step_time.TRAINERS:
        profiler = cProfile.Profile()
        profiler.enable()
        step_time.timed_run(kind, model, steps, opts)
        profiler.disable()
        stats = pstats.Stats(profiler).stats
        per_step[kind] = {step_time._name(f): row[3] / steps for f, row in stats.items()}  # cumulative
    ours, trl = per_step["ours"], per_step["trl"]
    report(f"## 5. Where the two trainers' times differ (cProfile, one run of {steps} steps each, ms per step)\n")
    for title, names in (("called by both", set(ours) & set(trl)), ("called by one only", set(ours) ^ set(trl))):
        ranked = sorted(names, key=lambda n: -abs(ours.get(n, 0.0) - trl.get(n, 0.0)))[:15]
        report(f"{title}:\n\n| function | ours | TRL | ours - TRL |\n|---|---:|---:|---:|")
        for name in ranked:
            a, b = ours.get(name, 0.0) * 1000, trl.get(name, 0.0) * 1000
            report(f"| `{name}` | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
        report("")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_checks.md")
    parser.add_argument("--quick", action="store_true", help="a tiny model and few steps: checks the script itself")
    parser.add_argument("--sections", default="1234", help="which sections to run, e.g. 124; 5 profiles both trainers")
    parser.add_argument("--reps", type=int, default=None, help="ABBA repetitions of section 2 (default 2)")
    parser.add_argument("--budget_s", type=float, default=420, help="start no section after this many seconds")
    args = parser.parse_args(argv)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = Report(Path(args.out) / "gpu_checks.md")
    report(f"# GPU checks ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    failures = 0
    peak = {"tflops": float("nan"), "bandwidth_gbs": float("nan")}
    medians = None
    opts = step_options(args.quick, device)
    opts.reps = args.reps or opts.reps
    with tempfile.TemporaryDirectory(prefix="gpu-checks-") as work:
        opts.work = work
        model = Path(work) / "model"
        params = build_model(model, TINY if args.quick else QWEN_05B, max_positions=256)
        sections = {
            "1": lambda: peak.update(chip(report, device, args.quick)),
            "2": lambda: step_time_section(report, model, params, peak, opts, device),
            "3": lambda: host_sync_section(report, model, opts, device),
            "4": lambda: transport_section(report, model, medians["ours"]["step"] if medians else None),
            "5": lambda: profile_section(report, model, opts),
        }
        began = time.perf_counter()
        for key in args.sections:
            start = time.perf_counter()
            if start - began > args.budget_s:  # a lease is short: say what was not measured rather than be killed
                report(f"section {key} not run: {start - began:.0f} s spent, over --budget_s {args.budget_s:.0f}\n")
                failures += 1
                continue
            try:
                result = sections[key]()
                if key == "2":
                    medians = result
            except Exception:  # noqa: BLE001 - one broken section must not cost the others' numbers
                failures += 1
                report(f"section {key} failed:\n```\n{traceback.format_exc()[-3000:]}```\n")
            print(f"[gpu_checks] section {key}: {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
