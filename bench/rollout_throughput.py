"""Rollout throughput: async lag-1 vs synchronous server mode vs colocate vs plain HF generation,
and bounded staleness K (``--max_staleness``) against the same synchronous server.

    .venv/bin/python bench/rollout_throughput.py [--steps 8] [--batch 64] [--completion 32] [--staleness 1 2 4 8]

Trains the same randomly initialised Qwen2-shaped model (random, so completions run to full length)
for ``--steps`` CISPO steps in each mode, each in its own process, and prints samples (completions)
per second over the steps after the first two (engine start-up and the first push excluded).

Every process is limited to one CPU thread, so on a 2-core machine the trainer and the rollout server
each have a core: that is the resource split async lag-1 exploits (generation of step k+1 overlaps
training of step k), as it would with a separate rollout GPU. The sizes are chosen so that generating
a batch and training on it cost about the same.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("hf", "colocate", "server", "async")
LABELS = {
    "hf": "transformers generate (no vLLM)",
    "colocate": "vLLM colocate",
    "server": "vLLM server, synchronous",
    "async": "vLLM server, async lag-1",
}


def build_model(path: Path, hidden: int, layers: int) -> None:
    """A random Qwen2 of the demo's family (character tokenizer, head_dim 64), saved to ``path``."""
    from swift_cispo.demo.tiny import save_random_model

    save_random_model(path, hidden, layers, max_positions=256)


def staleness_of(mode: str) -> int:
    """``stale-K`` runs the server with max_staleness K; ``async`` is ms-swift's async_generate (K = 1)."""
    return int(mode.split("-", 1)[1]) if mode.startswith("stale-") else int(mode == "async")


def label(mode: str) -> str:
    return LABELS.get(mode) or f"vLLM server, max_staleness {staleness_of(mode)}"


def worker(mode: str, model: str, port: int, steps: int, batch: int, completion: int, out: str) -> None:
    """One training run; writes the wall time at the end of every optimizer step to ``out``."""
    import torch

    torch.set_num_threads(1)
    from datasets import Dataset
    from transformers import TrainerCallback

    from swift_cispo import GRPOConfig, GRPOTrainer

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times = []

            self.lags = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "rollout/policy_lag" in logs:
                self.lags.append(logs["rollout/policy_lag"])

    vllm = {} if mode == "hf" else {"use_vllm": True, "vllm_mode": "colocate" if mode == "colocate" else "server"}
    if mode not in ("hf", "colocate"):
        vllm.update(vllm_server_port=port, max_staleness=staleness_of(mode))
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, num_generations=8,
        max_completion_length=completion, learning_rate=1e-4, max_steps=steps, logging_steps=1,
        report_to="none", use_cpu=True, save_strategy="no", seed=0, steps_per_generation=1,
        gradient_checkpointing=False, disable_tqdm=True, **vllm,
    )  # fmt: skip
    prompts = [f"{a}+{b}=" for a in range(20) for b in range(20)]
    clock = StepClock()
    trainer = GRPOTrainer(
        model=model, reward_funcs=lambda completions, **kw: [float(len(set(c))) for c in completions], args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[clock],
    )  # fmt: skip
    generation_times = []
    generate = trainer._generate_single_turn

    def timed_generate(*a, **k):  # time spent waiting for completions (for async: waiting for the prefetch)
        start = time.perf_counter()
        result = generate(*a, **k)
        generation_times.append((start, time.perf_counter()))
        return result

    trainer._generate_single_turn = timed_generate
    trainer.train()
    Path(out).write_text(json.dumps({"steps": clock.times, "generation": generation_times, "lags": clock.lags}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64, help="completions per optimizer step")
    parser.add_argument("--completion", type=int, default=32, help="completion length in tokens")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--staleness", nargs="*", type=int, default=[], metavar="K",
                        help="also run the server with --max_staleness K for each K given (e.g. 1 2 4 8)")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "PORT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        mode, port, out = opts.worker
        worker(mode, opts.model, int(port), opts.steps, opts.batch, opts.completion, out)
        return

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    model = work / "model"
    build_model(model, opts.hidden, opts.layers)
    port = free_port()
    server = None
    modes = list(opts.modes) + [f"stale-{k}" for k in opts.staleness]
    if any(mode not in ("hf", "colocate") for mode in modes):
        server = subprocess.Popen(
            [sys.executable, "-m", "swift_cispo", "rollout", "--model", str(model), "--port", str(port), "--torch_dtype", "float32"],
            env=env, stdout=(work / "server.log").open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
    results = {}
    try:
        for mode in modes:
            out = work / f"{mode}.json"
            print(f"[bench] {label(mode)} ...", file=sys.stderr, flush=True)
            subprocess.run(
                [sys.executable, __file__, "--worker", mode, str(port), str(out), "--model", str(model),
                 "--steps", str(opts.steps), "--batch", str(opts.batch), "--completion", str(opts.completion)],
                env=env, check=True, stdout=subprocess.DEVNULL, stderr=(work / f"{mode}.log").open("w"),
            )  # fmt: skip
            record = json.loads(out.read_text())
            times = record["steps"]
            measured = times[2:] if len(times) > 3 else times
            seconds_per_step = (measured[-1] - measured[0]) / (len(measured) - 1)
            waiting = sum(end - start for start, end in record["generation"] if measured[0] <= start < measured[-1])
            lags = record["lags"][2:] if len(record["lags"]) > 3 else record["lags"]
            results[mode] = (seconds_per_step, waiting / (measured[-1] - measured[0]), lags)
    finally:
        if server is not None:
            server.kill()
            server.wait()
    print(f"\nrandom Qwen2 model: hidden {opts.hidden}, {opts.layers} layers; {opts.batch} completions of {opts.completion} "
          f"tokens per step; {opts.steps} steps, timed over steps 3..{opts.steps}; 1 CPU thread per process\n")
    print("| mode | s/step | samples/s | share of the step spent waiting for rollouts | policy lag (timed steps) | vs synchronous server |")
    print("|---|---:|---:|---:|---|---:|")
    base = results.get("server", (None,))[0]
    for mode, (seconds, waiting, lags) in results.items():
        ratio = f"{base / seconds:.2f}x" if base else "-"
        spread = ", ".join(f"{int(lag)}: {lags.count(lag)}" for lag in sorted(set(lags))) if lags else "-"
        print(f"| {label(mode)} | {seconds:.2f} | {opts.batch / seconds:.1f} | {waiting:.0%} | {spread} | {ratio} |")


if __name__ == "__main__":
    main()
