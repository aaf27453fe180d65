"""Advantage estimators: how one rollout's rewards become per-completion advantages.

``rewards`` is the weighted reward of every completion of the rollout (all processes), ``K``
completions per prompt in consecutive groups. ms-swift's three estimators (its ``advantage_estimator``):

- ``grpo`` (DeepSeekMath): ``A_i = r_i - mean_group(r)``.
- ``rloo`` (Ahmadian et al. 2024, REINFORCE Leave-One-Out): the baseline of completion ``i`` is the
  mean of the *other* ``K - 1`` rewards, ``A_i = r_i - (sum_group(r) - r_i) / (K - 1)
  = K / (K - 1) * (r_i - mean_group(r))``; unbiased, since the baseline does not depend on ``r_i``.
- ``reinforce_plus_plus`` (Hu 2025, REINFORCE++ with a group baseline): ``A_i = r_i - mean_group(r)``,
  then normalised by the standard deviation *of the advantages* over the batch (``scale_rewards
  batch``, its default) rather than of the raw rewards.

``scale_rewards`` then divides by a standard deviation (``group``: within the group, ``batch``: over
the rollout, ``none``: not at all), plus ``SCALE_EPSILON`` as TRL does. ``kl_in_reward`` subtracts
``beta * KL`` (per sequence, summed over tokens) from the reward before any of this (PPO's reward shaping).
"""

from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "rloo", "reinforce_plus_plus")
SCALES = ("group", "batch", "none")
#: Added to a standard deviation before dividing by it (TRL's value, so grpo matches TRL exactly).
SCALE_EPSILON = 1e-4
#: ms-swift binds --scale_rewards' default to the estimator.
DEFAULT_SCALE = {"grpo": "group", "rloo": "none", "reinforce_plus_plus": "batch"}


def _group_mean(values: torch.Tensor, k: int) -> torch.Tensor:
    return values.view(-1, k).mean(dim=1).repeat_interleave(k)


def _group_std(values: torch.Tensor, k: int) -> torch.Tensor:
    if k < 2:
        return torch.zeros_like(values)
    return values.view(-1, k).std(dim=1).repeat_interleave(k)


def _batch_std(values: torch.Tensor) -> torch.Tensor:
    return values.std().expand_as(values) if values.numel() > 1 else torch.zeros_like(values)


def estimate_advantages(rewards: torch.Tensor, k: int, estimator: str = "grpo", scale: str = "group") -> torch.Tensor:
    """Per-completion advantages of a ``(N,)`` reward vector, ``N`` a multiple of ``k``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"advantage_estimator must be one of {', '.join(ESTIMATORS)}; got {estimator!r}")
    if scale not in SCALES:
        raise ValueError(f"scale_rewards must be one of {', '.join(SCALES)}; got {scale!r}")
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards do not form groups of {k}")
    centred = rewards - _group_mean(rewards, k)
    advantages = centred * (k / (k - 1)) if estimator == "rloo" and k > 1 else centred
    if scale == "none":
        return advantages
    if estimator == "reinforce_plus_plus":  # the spread of the advantages themselves
        std = _batch_std(advantages) if scale == "batch" else _group_std(advantages, k)
    else:
        std = _batch_std(rewards) if scale == "batch" else _group_std(rewards, k)
    return advantages / (std + SCALE_EPSILON)


def sequence_kl(old_log_probs: torch.Tensor, ref_log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` KL estimate of each completion from the reference: the sum of ``log pi_old - log pi_ref`` over its tokens."""
    return ((old_log_probs - ref_log_probs) * mask).sum(dim=1)
