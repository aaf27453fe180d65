"""Checks that stop a run, or warn about one, before it can go wrong silently.

- :func:`empty_run_reason`: a run that would train no step (it would otherwise exit 0 with the
  untouched model saved as its result);
- :func:`non_finite_problem`: NaN/inf in the loss or log-probs, checked before backward;
- :func:`schedule_change_note`: a resumed run whose learning-rate schedule cannot match a straight run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def empty_run_reason(config, num_prompts: int) -> str | None:
    """Why training ``num_prompts`` dataset rows with ``config`` would run no optimizer step; None if it trains.

    TRL's sampler hands out whole generation batches of ``generation_batch_size / num_generations``
    prompts (all processes) and drops a last, partial one; transformers then trains
    ``max_steps`` steps, or ``num_train_epochs`` passes. A run that trains nothing would otherwise
    exit 0 and save the untouched model as its result.
    """
    per_generation = config.generation_batch_size // config.num_generations
    if num_prompts < per_generation:
        return (
            f"the dataset has {num_prompts} prompts, fewer than the {per_generation} one generation batch takes "
            f"(generation_batch_size {config.generation_batch_size} / num_generations {config.num_generations}), so no "
            "step would run; add rows, or lower --per_device_train_batch_size or --steps_per_generation"
        )
    if config.max_steps == 0:
        return "--max_steps 0 trains no step; give a positive --max_steps, or leave it out to train --num_train_epochs"
    if config.max_steps < 0 and config.num_train_epochs <= 0:
        return f"--num_train_epochs {config.num_train_epochs:g} trains no step; give a positive number of epochs or --max_steps"
    return None


def non_finite_problem(loss: torch.Tensor, log_probs: torch.Tensor, mask: torch.Tensor) -> str | None:
    """What is NaN/inf among the loss and the completion tokens' log-probs, in words; None if all are finite."""
    bad = (~torch.isfinite(log_probs.detach()) & mask.bool()).sum()
    value, bad_log_probs = torch.stack([loss.detach().float(), bad.float()]).tolist()  # one device sync
    bad_log_probs = int(bad_log_probs)
    if math.isfinite(value) and not bad_log_probs:
        return None
    where = f"{bad_log_probs} completion-token log-probs are NaN or inf" if bad_log_probs else "the log-probs are finite"
    return f"the loss is {value} ({where})"



#: Learning-rate schedules whose value at a step does not depend on the run's length (max_steps).
_LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau")


def schedule_change_note(checkpoint: Path, args, max_steps: int) -> str | None:
    """Why a run resumed from ``checkpoint`` with ``max_steps`` cannot match one that ran straight, or None.

    Weights, optimizer, RNG and the rollout window resume exactly. But a schedule that stretches with
    the run's length (cosine, linear, ... or warmup given as a ratio) gave the checkpoint's steps
    the learning rates of the *earlier* length; extending a finished run then diverges from a run
    that was that long from the start.
    """
    try:
        saved_max_steps = int(json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if saved_max_steps == max_steps:
        return None
    schedule = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    depends = [f"--lr_scheduler_type {schedule}"] if schedule not in _LENGTH_FREE_SCHEDULES else []
    if 0 < args.warmup_steps < 1:  # transformers reads a warmup below 1 as a share of the run (ms-swift's --warmup_ratio)
        depends.append(f"a warmup of {args.warmup_steps:g} of the run")
    if not depends:
        return None
    return (
        f"{checkpoint.name} was trained for a run of {saved_max_steps} steps and this run has {max_steps}: "
        f"{' and '.join(depends)} scale with the run's length, so the learning rates of its first steps differ from "
        "a run that had this length from the start (weights, optimizer and rollouts still resume exactly)"
    )
