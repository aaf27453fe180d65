"""Dynamic sampling (DAPO, arXiv 2503.14476 Sec. 3.2): groups whose rewards are all equal carry no signal.

A group of ``num_generations`` completions of one prompt whose rewards are all equal has zero
advantage everywhere: it adds tokens to the normaliser and nothing to the gradient. With
``dynamic_sample`` the trainer rolls out fresh prompts and puts their informative groups in the
place of the flat ones, for at most ``max_resample_times`` rounds (ms-swift's flags and defaults).
What is left flat after the last round stays, and the log says how many.

These are the pure pieces: which groups are flat (TRL's own test for a zero reward std), which
prompts a round draws, and how two scored rollouts are merged row by row.
"""

from __future__ import annotations

import torch

#: Rollout keys aligned with the prompt (left-padded by TRL); every other 2-D tensor follows the completion.
PROMPT_KEYS = ("prompt_ids", "prompt_mask")


def flat_groups(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Which groups have rewards that are all equal: a ``(num_groups,)`` bool tensor.

    The rewards are combined as TRL combines them (weighted sum over functions, NaN where no function
    applies) and a group is flat when its reward std is close to zero, TRL's ``is_std_zero``.
    """
    rewards = (rewards_per_func * reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
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
