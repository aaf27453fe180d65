"""Embedded demo: a tiny causal LM and a verifiable addition task on which CISPO visibly raises the reward on a CPU.

``DEMO_MODEL_DIR`` holds a ~0.36M-parameter Qwen2 model with a character-level tokenizer, pretrained into a weak
"base model" (right about a quarter of the time when sampled at temperature 1.0; see
``scripts/build_demo_model.py``). ``DEMO_DATASET_PATH`` is a JSON-lines file of ``{"prompt": "12+7=", "answer":
"19"}`` rows. ``DEMO_HPARAMS`` are ``GRPOConfig`` settings tuned so that, with ``loss_type="cispo"``, the mean reward
climbs from ~0.3 to ~0.9 in a couple of minutes on two CPU cores (evidence: ``scripts/tune_demo.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swift_cispo.demo.task import make_problems, reward_exact_match, score

_HERE = Path(__file__).resolve().parent

DEMO_MODEL_DIR: Path = _HERE / "model"
DEMO_DATASET_PATH: Path = _HERE / "addition.jsonl"

# Keys are GRPOConfig field names. They do not include the loss choice itself (loss_type="cispo", epsilon_high) or
# run plumbing (output_dir, report_to, use_cpu, seed): those belong to the caller.
DEMO_HPARAMS: dict[str, Any] = {
    "learning_rate": 2e-3,  # placeholder while tuning
    "num_generations": 8,
    "per_device_train_batch_size": 32,
    "steps_per_generation": 2,
    "gradient_accumulation_steps": 1,
    "max_completion_length": 4,
    "temperature": 1.0,
    "max_steps": 200,
    "beta": 0.0,
    "logging_steps": 2,
    "lr_scheduler_type": "constant",
}

__all__ = [
    "DEMO_DATASET_PATH",
    "DEMO_HPARAMS",
    "DEMO_MODEL_DIR",
    "make_problems",
    "reward_exact_match",
    "score",
]
