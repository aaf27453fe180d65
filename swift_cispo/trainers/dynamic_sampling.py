"""Dynamic sampling (DAPO, arXiv 2503.14476 Sec. 3.2): groups whose rewards are all equal carry no signal.

A group of ``num_generations`` completions of one prompt whose rewards are all equal has zero
advantage everywhere: it adds tokens to the normaliser and nothing to the gradient. With
``dynamic_sample`` the trainer rolls out fresh prompts and puts their informative groups in the
place of the flat ones, for at most ``max_resample_times`` rounds (ms-swift's flags and defaults).
What is left flat after the last round stays, and the log says how many.

The pure pieces: which groups are flat (TRL's own test for a zero reward std), which prompts a
round draws, and how two scored rollouts are merged row by row; ``resample_flat_groups`` runs the
rounds with them, given a function that rolls out and scores a list of dataset rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

#: Rollout keys aligned with the prompt (left-padded by TRL); every other 2-D tensor follows the completion.
PROMPT_KEYS = ("prompt_ids", "prompt_mask")


def flat_groups(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Which groups have rewards that are all equal: a ``(num_groups,)`` bool tensor.

    The rewards are combined as TRL combines them (weighted sum over functions, NaN where no function
    applies) and a group is flat when its reward std is close to zero, TRL's ``is_std_zero``.
    """
    return zero_std_groups(combined_rewards(rewards_per_func, reward_weights), num_generations)


def combined_rewards(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor) -> torch.Tensor:
    """TRL's reward of each completion: the weighted sum over reward functions, NaN where none applies."""
    rewards = (rewards_per_func * reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return rewards


def zero_std_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Groups (``num_generations`` consecutive rewards) whose reward std is zero, TRL's ``is_std_zero``."""
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    count = (~torch.isnan(grouped)).sum(dim=1)
    variance = torch.nansum((grouped - mean) ** 2, dim=1) / (count - 1).clamp(min=1)
    std = torch.sqrt(variance)
    return torch.isclose(std, torch.zeros_like(std)) | (count < 2)


def resample_prompts(num_rows: int, per_process: int, process_index: int, num_processes: int, generator: torch.Generator) -> list[int]:
    """Dataset rows one resampling round gives this process: distinct across processes, drawn from ``generator``.

    Every process draws the same permutation (the generator is seeded alike everywhere) and takes
    its own slice, so no two processes roll out the same prompt in a round.
    """
    order = torch.randperm(num_rows, generator=generator).tolist()
    need = per_process * num_processes
    order = (order * (need // num_rows + 1))[:need]  # a dataset smaller than a round's need repeats
    return order[process_index * per_process : (process_index + 1) * per_process]


def _pad_to(tensor: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    missing = width - tensor.size(1)
    if missing <= 0:
        return tensor
    pad = torch.full((tensor.size(0), missing, *tensor.shape[2:]), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


def replace_rows(base: dict, fresh: dict, rows: list[int], fresh_rows: list[int], pad_token_id: int) -> dict:
    """``base`` with its rows ``rows`` replaced by ``fresh``'s rows ``fresh_rows`` (same order), padding aligned.

    Prompt tensors are left-padded and completion tensors right-padded to the wider of the two
    rollouts, then trimmed of columns that no row uses any more. Per-row vectors (advantages) are
    copied; scalars (``num_items_in_batch``) are left to the caller.
    """
    if len(rows) != len(fresh_rows):
        raise ValueError(f"replace_rows: {len(rows)} rows to replace but {len(fresh_rows)} given")
    merged = dict(base)
    if not rows:
        return merged
    index = torch.tensor(rows, device=base["prompt_ids"].device)
    fresh_index = torch.tensor(fresh_rows, device=base["prompt_ids"].device)
    for key, value in base.items():
        other = fresh.get(key)
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or not isinstance(other, torch.Tensor):
            continue
        left = key in PROMPT_KEYS
        fill = pad_token_id if key.endswith("_ids") else 0
        if value.dim() >= 2:
            width = max(value.size(1), other.size(1))
            value, other = _pad_to(value, width, fill, left), _pad_to(other, width, fill, left)
        value = value.clone()
        value[index] = other[fresh_index].to(value.dtype)
        merged[key] = value
    return _trim_padding(merged)


def _trim_padding(rollout: dict) -> dict:
    """Drop prompt columns that are padding in every row (on the left) and completion columns (on the right)."""
    prompt_used = rollout["prompt_mask"].bool().any(dim=0).nonzero()
    completion_used = rollout["completion_mask"].bool().any(dim=0).nonzero()
    start = int(prompt_used[0]) if len(prompt_used) else 0
    end = int(completion_used[-1]) + 1 if len(completion_used) else 0
    prompt_width, completion_width = rollout["prompt_ids"].size(1), rollout["completion_ids"].size(1)
    for key, value in rollout.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            continue
        if key in PROMPT_KEYS and value.size(1) == prompt_width:
            rollout[key] = value[:, start:]
        elif key not in PROMPT_KEYS and value.size(1) == completion_width:
            rollout[key] = value[:, :end]
    return rollout


@dataclass(frozen=True)
class ResampleResult:
    """A generation batch after dynamic sampling, and its counts over all processes."""

    rollout: dict
    flat_groups: float  # found before the first round
    left_flat: float  # still flat after the last round
    rounds: int


def resample_flat_groups(
    rollout: dict,
    rewards_per_func: torch.Tensor,
    generate: Callable[[list], tuple[dict, torch.Tensor]],
    *,
    dataset: Sequence,
    reward_weights: torch.Tensor,
    num_generations: int,
    max_rounds: int,
    seed: int,
    step: int,
    pad_token_id: int,
    accelerator,
) -> ResampleResult:
    """DAPO's dynamic sampling: replace this process's flat groups with informative ones from fresh prompts.

    ``rewards_per_func`` holds every process's rows, in process order (as TRL gathers them);
    ``generate(raw_rows)`` rolls out and scores dataset rows and returns the scored rollout and its
    gathered rewards. Every process takes part in every round (the rollout's reward gathering is
    collective) until no process has a flat group left, or after ``max_rounds`` rounds. The prompts of
    a round come from a generator seeded by ``seed``, ``step`` and the round, so a resumed run draws the same.
    """
    group = num_generations
    local_rows = rollout["completion_ids"].size(0)
    start = accelerator.process_index * local_rows

    def local_flat(rewards) -> list[int]:
        return flat_groups(rewards[start : start + local_rows], reward_weights, group).nonzero().flatten().tolist()

    flat = local_flat(rewards_per_func)
    found = len(flat)
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        pending = accelerator.reduce(torch.tensor(float(len(flat)), device=accelerator.device), reduction="sum")
        if pending.item() == 0:
            rounds -= 1
            break
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + rounds)
        rows = resample_prompts(len(dataset), local_rows // group, accelerator.process_index, accelerator.num_processes, generator)
        fresh, fresh_rewards = generate([dataset[index] for index in rows for _ in range(group)])
        still_flat = set(local_flat(fresh_rewards))
        informative = [g for g in range(local_rows // group) if g not in still_flat]
        swaps = list(zip(flat, informative))
        rollout = replace_rows(
            rollout, fresh,
            [g * group + k for g, _ in swaps for k in range(group)],
            [f * group + k for _, f in swaps for k in range(group)],
            pad_token_id,
        )  # fmt: skip
        flat = flat[len(swaps) :]
    totals = accelerator.reduce(torch.tensor([float(found), float(len(flat))], device=accelerator.device), reduction="sum")
    found_all, left_all = totals.tolist()
    return ResampleResult(rollout, found_all, left_all, rounds)
