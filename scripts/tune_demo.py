#!/usr/bin/env python
"""Run plain TRL CISPO on the embedded demo and report how the reward moves: the evidence behind ``DEMO_HPARAMS``.

Each run trains the demo model with ``trl.GRPOTrainer`` (``loss_type="cispo"``, ``epsilon_high=5.0``, ``beta=0``)
on the addition data set with the exact-match reward, starting from ``swift_cispo.demo.DEMO_HPARAMS`` and applying
any ``--set key=value`` overrides (GRPOConfig field names). It prints, and appends as one JSON line to ``--results``:
the start reward (mean of the first 3 logged rewards), the final reward (mean of the last 10), the wall time from
process start (imports, model loading and trainer construction included) and the per-log reward curve.

    python scripts/tune_demo.py --seed 0 --seed 1
    python scripts/tune_demo.py --set learning_rate=3e-3 --set steps_per_generation=1 --tag lr3e-3_spg1

Uses plain TRL on purpose, so the demo's tuning does not depend on swift-cispo's own trainer.
"""

from __future__ import annotations

import time

_T0 = time.time()  # before the heavy imports: "wall time" includes them, as a user's run would

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def parse_value(text: str):
    """``"3e-3"`` -> 3e-3, ``"2"`` -> 2, ``"true"`` -> True, anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run_once(hparams: dict, seed: int, model_dir: Path, dataset_path: Path, t_start: float) -> dict:
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from swift_cispo.demo.task import reward_exact_match

    curve: list[dict] = []

    class RecordRewards(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                curve.append(
                    {
                        "step": state.global_step,
                        "reward": round(float(logs["reward"]), 4),
                        "t": round(time.time() - t_start, 1),
                        # CISPO's off-policy signal: how often the clamp of the IS weight was active.
                        "clip": round(float(logs.get("cispo_clip_ratio", "nan")), 4),
                    }
                )

    dataset = load_dataset("json", data_files=str(dataset_path), split="train")
    with tempfile.TemporaryDirectory() as out_dir:
        config = GRPOConfig(
            output_dir=out_dir,
            loss_type="cispo",
            epsilon_high=5.0,
            report_to="none",
            use_cpu=True,
            seed=seed,
            save_strategy="no",
            disable_tqdm=True,
            **hparams,
        )
        trainer = GRPOTrainer(
            model=str(model_dir),
            reward_funcs=reward_exact_match,
            args=config,
            train_dataset=dataset,
            callbacks=[RecordRewards()],
        )
        t_train = time.time()
        trainer.train()
    t_end = time.time()
    rewards = [point["reward"] for point in curve]
    return {
        "seed": seed,
        "start_reward": round(sum(rewards[:3]) / max(1, len(rewards[:3])), 3),
        "final_reward": round(sum(rewards[-10:]) / max(1, len(rewards[-10:])), 3),
        "wall_s": round(t_end - t_start, 1),
        "train_s": round(t_end - t_train, 1),
        "curve": curve,
    }


def main() -> None:
    from swift_cispo.demo import DEMO_DATASET_PATH, DEMO_HPARAMS, DEMO_MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, action="append", help="repeatable; default: 0")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a DEMO_HPARAMS key")
    parser.add_argument("--model_dir", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--dataset", type=Path, default=DEMO_DATASET_PATH)
    parser.add_argument("--tag", default="default", help="label stored with the results")
    parser.add_argument("--results", type=Path, default=None, help="append one JSON line per run here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    hparams = dict(DEMO_HPARAMS)
    for item in args.set:
        key, _, value = item.partition("=")
        hparams[key] = parse_value(value)

    for i, seed in enumerate(args.seed or [0]):
        # The first run's clock starts at process start (imports included); later ones at their own start.
        result = run_once(hparams, seed, args.model_dir, args.dataset, _T0 if i == 0 else time.time())
        result = {"tag": args.tag, "hparams": hparams, **result}
        summary = {k: result[k] for k in ("tag", "seed", "start_reward", "final_reward", "wall_s", "train_s")}
        print("RESULT " + json.dumps(summary), flush=True)
        print("CURVE " + " ".join(f"{p['step']}:{p['reward']:.2f}" for p in result["curve"]), flush=True)
        if args.results is not None:
            with args.results.open("a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
