"""The built-in per-token policy losses.

Notation: ``r = pi_theta / pi_old`` per token, ``A`` the advantage, ``sg`` stop-gradient.

- ``cispo`` (MiniMax-M1 Eq. 4, ScaleRL Eq. 4):  ``-sg(min(r, epsilon_high)) * A * log pi_theta``.
  The weight is a constant, so *every* token keeps its gradient through ``log pi_theta``; the cap
  only bounds how much an off-policy token counts.
- ``grpo`` / ``bnpo`` / ``dr_grpo`` / ``dapo`` (PPO-clip):
  ``-min(r * A, clip(r, 1 - epsilon_low, 1 + epsilon_high) * A)``. A token whose ratio has left the
  clip range on the side its advantage pushes toward gets *zero* gradient. The four names differ
  only in their reduction.
"""

from __future__ import annotations

import torch

from .common import log_importance_ratio
from .registry import LossConfig, LossOutput, register_loss


@register_loss("cispo", reduction="global_token_mean")
def cispo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: LossConfig,
) -> LossOutput:
    log_ratio = log_importance_ratio(log_probs, old_log_probs, mask, config.importance_sampling_level)
    ratio = torch.exp(log_ratio.detach())  # may overflow to inf far off-policy: the cap below absorbs it
    importance_weight = torch.clamp(ratio, max=config.epsilon_high)  # sg(min(r, eps_high)): no gradient
    per_token_loss = -importance_weight * advantages * log_probs
    capped = ratio > config.epsilon_high
    return LossOutput(
        per_token_loss=per_token_loss,
        metrics={
            # ms-swift / TRL's name: tokens whose positive-advantage push was capped
            "cispo_clip_ratio": (capped & (advantages > 0)).float(),
            "cispo/importance_weight_mean": importance_weight,
        },
    )


def ppo_clip_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: LossConfig,
) -> LossOutput:
    log_ratio = log_importance_ratio(log_probs, old_log_probs, mask, config.importance_sampling_level)
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1 - config.epsilon_low, 1 + config.epsilon_high)
    unclipped_ratio = ratio if config.delta is None else torch.clamp(ratio, max=config.delta)
    per_token_loss = -torch.min(unclipped_ratio * advantages, clipped_ratio * advantages)
    is_low_clipped = (ratio < 1 - config.epsilon_low) & (advantages < 0)
    is_high_clipped = (ratio > 1 + config.epsilon_high) & (advantages > 0)
    return LossOutput(
        per_token_loss=per_token_loss,
        metrics={
            "clip_ratio/low_mean": is_low_clipped.float(),
            "clip_ratio/high_mean": is_high_clipped.float(),
            "clip_ratio/region_mean": (is_low_clipped | is_high_clipped).float(),
        },
    )


# The PPO-clip family: one per-token loss, four normalisations.
register_loss("grpo", reduction="sequence_mean")(ppo_clip_loss)
register_loss("bnpo", reduction="batch_token_mean")(ppo_clip_loss)
register_loss("dr_grpo", reduction="constant_length")(ppo_clip_loss)
register_loss("dapo", reduction="global_token_mean")(ppo_clip_loss)
