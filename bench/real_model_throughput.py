"""Rollout throughput on a real pretrained model (SmolLM2-135M-Instruct), where each step's time goes, and the floors.

    .venv/bin/python bench/real_model_throughput.py [--sizes 32 128] [--modes hf colocate server async] [--steps 3]

Trains SmolLM2-135M-Instruct (written once by scripts/get_real_model.py) with CISPO on generated arithmetic
chat prompts (examples/scripts/arith_data.py), 8 completions per prompt of at most 64 tokens, one rollout per
optimizer step (``--sizes`` completions, micro-batches of 32), in each rollout mode, each run in its own process:

- ``hf``: transformers' generate in the trainer (no vLLM), the baseline;
- ``colocate``: a vLLM engine in the trainer process;
- ``server``: a ``swift rollout`` server, synchronous (weights pushed, then the rollout asked for);
- ``async``: the same server with ``--async_generate`` (lag 1: step k+1's rollout is generated during step k).

Timed over the steps after the first (engine warm-up, first weight push). For each it prints samples per second
and where a step's time goes: generation (waiting for completions; for async, waiting for the prefetch), weight
sync, the old-log-prob pass (TRL's no-grad pass over the rollout), the rest of scoring the rollout (rewards,
advantages, tokenising), and training (forward, backward, optimizer).

The floors it compares with, from the matmul throughput and memory bandwidth measured here first:
decoding compute ``2 x parameters x (prompt + completion tokens)``; decoding's weight traffic, every decode step
reading the weights once (``parameters x 4 bytes x the longest completion``, the whole rollout in one batch);
training compute ``6 x parameters x tokens``. A mode's generation time is reported as a multiple of
``max(compute, weight traffic)``.

Threads: hf, colocate and the synchronous server use both cores in turn (the server and the trainer never compute at
once). Async runs them at once, so each process gets one core: the same split a rollout GPU and a training GPU give.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from rollout_throughput import LABELS, MODES  # noqa: E402  (the same four modes, the same names)

MICRO_BATCH, GENERATIONS, COMPLETION = 32, 8, 64
PHASES = ("generation", "weight_sync", "old_logprob_pass", "other_scoring", "training")


def label(name: str) -> str:
    """``colocate-trl``: the mode with TRL's fused head and old-log-prob pass."""
    mode, _, trl = name.partition("-")
    return LABELS[mode] + (", TRL's fused head and old-log-prob pass" if trl else "")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_for(mode: str) -> int:
    """Async overlaps the server's generation with training: each process gets half the cores."""
    return max(1, cores() // 2) if mode == "async" else cores()


def arithmetic_rows(count: int) -> list[dict]:
    sys.path.insert(0, str(REPO / "examples" / "scripts"))
    from arith_data import row

    rng = random.Random(0)
    return [{"prompt": r["messages"], "solution": r["solution"]} for r in (row(rng) for _ in range(count))]  # TRL's conversational column


def measure_machine(threads: int) -> dict:
    """fp32 matmul throughput (the shapes of a 576-wide model on a batch of tokens) and memory bandwidth."""
    import torch

    torch.set_num_threads(threads)
    results = {}
    a, b = torch.randn(4096, 576), torch.randn(576, 1536)
    for _ in range(3):
        a @ b
    start, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        a @ b
    results["matmul_flops"] = 2 * 4096 * 576 * 1536 * repeats / (time.perf_counter() - start)
    big = torch.empty(128 * 2**20 // 4)  # 128 MiB, well past the caches
    out = torch.empty_like(big)
    out.copy_(big)
    start, repeats = time.perf_counter(), 10
    for _ in range(repeats):
        out.copy_(big)
    results["bandwidth"] = 2 * big.numel() * 4 * repeats / (time.perf_counter() - start)  # read + write
    return results


def worker(mode: str, model: str, port: int, size: int, steps: int, out: str, trl_paths: bool = False) -> None:
    """One training run: the intervals of every phase, and the wall time at the end of every optimizer step.

    ``trl_paths``: log-probs through TRL's fused LM head and, with vLLM, TRL's old-log-prob pass over every rollout
    (what this trainer did before it took the plain head on a CPU and skipped that pass within one optimizer step).
    """
    import torch

    torch.set_num_threads(threads_for(mode))
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer as TRLGRPOTrainer

    from swift_cispo import GRPOConfig, GRPOTrainer

    intervals: list[tuple[str, float, float]] = []
    tokens: list[tuple[int, int, int]] = []  # per rollout: prompt tokens, completion tokens, longest completion

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    def timed(name, function, when=lambda: True):
        def wrapper(*a, **k):
            if not when():
                return function(*a, **k)
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                intervals.append((name, start, time.perf_counter()))

        return wrapper

    vllm = {} if mode == "hf" else {"use_vllm": True, "vllm_mode": "colocate" if mode == "colocate" else "server"}
    if mode in ("server", "async"):
        vllm.update(vllm_server_port=port, async_generate=mode == "async")
    accumulation = size // MICRO_BATCH
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation, num_generations=GENERATIONS, max_completion_length=COMPLETION,
        temperature=1.0, learning_rate=1e-6, beta=0.0, max_steps=steps, logging_steps=1, report_to="none", use_cpu=True,
        save_strategy="no", seed=0, gradient_checkpointing=False, disable_tqdm=True, **vllm,
    )  # fmt: skip
    if trl_paths:
        GRPOTrainer._get_per_token_logps_and_entropies = TRLGRPOTrainer._get_per_token_logps_and_entropies
        args.vllm_importance_sampling_correction = mode != "hf"  # TRL's switch for its old-log-prob pass
    clock = StepClock()
    trainer = GRPOTrainer(
        model=model, reward_funcs=lambda completions, **kw: [float(len(str(c)) % 7) for c in completions], args=args,
        train_dataset=Dataset.from_list(arithmetic_rows(size * steps // GENERATIONS)), callbacks=[clock],
    )  # fmt: skip
    trainer._generate_single_turn = timed("generation", trainer._generate_single_turn)
    trainer._rollout = timed("rollout", trainer._rollout)
    trainer.training_step = timed("training_step", trainer.training_step)
    trainer._get_per_token_logps_and_entropies = timed(
        "old_logprob_pass", trainer._get_per_token_logps_and_entropies, when=lambda: not torch.is_grad_enabled()
    )
    if mode != "hf":
        backend = trainer.vllm_generation
        name = "sync_weights" if mode == "colocate" else "_push_weights"
        setattr(backend, name, timed("weight_sync", getattr(backend, name)))
    score = trainer._generate_and_score_completions

    def counted(inputs):
        output = score(inputs)
        lengths = output["completion_mask"].sum(1)
        tokens.append((int(output["prompt_mask"].sum()), int(lengths.sum()), int(lengths.max())))
        return output

    trainer._generate_and_score_completions = counted
    trainer.train()
    Path(out).write_text(json.dumps({"steps": clock.times, "intervals": intervals, "tokens": tokens}))


def step_breakdown(record: dict) -> dict:
    """Mean seconds per timed step (every step after the first) in each phase."""
    times = record["steps"]
    start, end = times[1], times[-1]  # times[0]: the trainer built; times[1]: step 1 ended (warm-up, not timed)
    timed_steps = len(times) - 2

    def within(name):
        return sum(min(b, end) - max(a, start) for n, a, b in record["intervals"] if n == name and b > start and a < end)

    raw_generation, sync, old, rollout = (within(n) for n in ("generation", "weight_sync", "old_logprob_pass", "rollout"))
    # colocate and the synchronous server push the weights inside the generation call; async pushes them earlier
    sync_inside = sum(
        max(0.0, min(b, g1, end) - max(a, g0, start))
        for n, a, b in record["intervals"] if n == "weight_sync"
        for m, g0, g1 in record["intervals"] if m == "generation"
    )  # fmt: skip
    result = {
        "step": (end - start) / timed_steps,
        "generation": (raw_generation - sync_inside) / timed_steps,
        "weight_sync": sync / timed_steps,
        "old_logprob_pass": old / timed_steps,
        "other_scoring": max(rollout - raw_generation - old, 0.0) / timed_steps,
    }
    result["training"] = result["step"] - sum(result[p] for p in PHASES[:-1])
    prompt, completion, longest = (sum(t[i] for t in record["tokens"][1:]) / max(len(record["tokens"]) - 1, 1) for i in range(3))
    result.update(prompt_tokens=prompt, completion_tokens=completion, longest=longest)
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def real_model() -> str:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "get_real_model.py")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    if result.returncode != 0:
        sys.exit(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "scripts/get_real_model.py failed")
    return result.stdout.strip().splitlines()[-1]


def start_server(model: str, port: int, threads: int, env: dict, log: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "swift_cispo", "rollout", "--model", model, "--port", str(port), "--torch_dtype", "float32",
         "--vllm_max_model_len", "512"],
        env={**env, "OMP_NUM_THREADS": str(threads)}, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 128], help="completions per optimizer step (multiples of 32)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run; every step after the first is timed")
    parser.add_argument("--model", help="a model folder (default: SmolLM2-135M-Instruct from scripts/get_real_model.py)")
    parser.add_argument("--keep", help="write the raw records (JSON) to this folder")
    parser.add_argument("--trl-paths", action="store_true",
                        help="also run each mode with TRL's fused LM head and old-log-prob pass (the trainer before 2026-11-27)")
    parser.add_argument("--worker", nargs=4, metavar=("MODE", "PORT", "SIZE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-trl-paths", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        mode, port, size, out = opts.worker
        worker(mode, opts.model, int(port), int(size), opts.steps, out, opts.worker_trl_paths)
        return
    if opts.steps < 2 or any(size % MICRO_BATCH for size in opts.sizes):
        parser.error(f"--steps must be at least 2 (the first is not timed) and every --sizes value a multiple of {MICRO_BATCH}")

    model = opts.model or real_model()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # the shapes only; tied embeddings are counted once
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())
    machine = measure_machine(cores())
    work = Path(opts.keep or tempfile.mkdtemp(prefix="bench-real-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4")}  # fmt: skip
    results: dict[tuple[str, int], dict] = {}
    for mode in opts.modes:
        server = None
        port = free_port()
        try:
            if mode in ("server", "async"):
                server = start_server(model, port, threads_for(mode), env, work / f"server-{mode}.log")
            for size in opts.sizes:
                for trl_paths in (False, True) if opts.trl_paths else (False,):
                    name = f"{mode}{'-trl' if trl_paths else ''}"
                    out = work / f"{name}-{size}.json"
                    print(f"[bench] {label(name)}, {size} completions per step ...", file=sys.stderr, flush=True)
                    started = time.perf_counter()
                    subprocess.run(
                        [sys.executable, __file__, "--worker", mode, str(port), str(size), str(out), "--model", model,
                         "--steps", str(opts.steps), *(["--worker-trl-paths"] if trl_paths else [])],
                        env={**env, "OMP_NUM_THREADS": str(threads_for(mode))}, check=True, stdout=subprocess.DEVNULL,
                        stderr=(work / f"{name}-{size}.log").open("w"),
                    )  # fmt: skip
                    results[name, size] = step_breakdown(json.loads(out.read_text()))
                    print(f"[bench]   done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        finally:
            if server is not None:
                server.terminate()
                server.wait()

    flops, bandwidth = machine["matmul_flops"], machine["bandwidth"]
    print(f"\nSmolLM2-135M-Instruct ({parameters / 1e6:.1f}M parameters, float32); {cores()} CPU cores: fp32 matmul "
          f"{flops / 1e9:.0f} GFLOP/s, memory copy {bandwidth / 1e9:.1f} GB/s; {opts.steps} steps per run, steps 2..{opts.steps} timed\n")
    print("| completions/step | mode | s/step | samples/s | vs HF | generation | weight sync | old-log-prob pass | other scoring "
          "| training | generation / its floor | training / its floor |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (mode, size), r in results.items():
        base = results.get(("hf", size))
        decode_compute = 2 * parameters * (r["prompt_tokens"] + r["completion_tokens"]) / flops
        decode_weights = parameters * 4 * r["longest"] / bandwidth
        train_floor = 6 * parameters * (r["prompt_tokens"] + r["completion_tokens"]) / flops
        vs = f"{base['step'] / r['step']:.2f}x" if base else "-"
        # async waits for a rollout generated during the previous step, on the server: no generation time to compare
        gen_vs_floor = "overlapped" if mode.startswith("async") else f"{r['generation'] / max(decode_compute, decode_weights):.1f}x"
        share = {p: f"{r[p]:.1f} s ({r[p] / r['step']:.0%})" for p in PHASES}
        print(f"| {size} | {label(mode)} | {r['step']:.1f} | {size / r['step']:.2f} | {vs} | {share['generation']} | "
              f"{share['weight_sync']} | {share['old_logprob_pass']} | {share['other_scoring']} | {share['training']} | "
              f"{gen_vs_floor} | {r['training'] / train_floor:.1f}x |")
    print("\nfloors per step (from the first mode's token counts at each size):")
    for size in opts.sizes:
        r = next(v for (m, s), v in results.items() if s == size)
        print(f"- {size} completions ({r['prompt_tokens']:.0f} prompt + {r['completion_tokens']:.0f} completion tokens, longest "
              f"{r['longest']:.0f}): decoding compute {2 * parameters * (r['prompt_tokens'] + r['completion_tokens']) / flops:.1f} s, "
              f"decoding weight traffic {parameters * 4 * r['longest'] / bandwidth:.1f} s, "
              f"training compute {6 * parameters * (r['prompt_tokens'] + r['completion_tokens']) / flops:.1f} s")
    if opts.keep:
        (work / "summary.json").write_text(json.dumps({"machine": machine, "parameters": parameters,
                                                       "results": {f"{m}-{s}": v for (m, s), v in results.items()}}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
