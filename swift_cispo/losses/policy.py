"""The built-in per-token policy losses.

Notation: ``r = pi_theta / pi_old`` per token, ``A`` the advantage, ``sg`` stop-gradient.

- ``cispo`` (MiniMax-M1 Eq. 4, ScaleRL Eq. 4):  ``-sg(w) * A * log pi_theta`` with the importance
  weight ``w = min(r, epsilon_high)`` (``cap`` convention) or ``clip(r, 1 - lo, 1 + epsilon_high)``
  (``offset`` convention). The weight is a constant, so *every* token keeps its gradient through
  ``log pi_theta``; the clip only bounds how much an off-policy token counts. With
  ``cispo_token_mask`` (Eq. 7) tokens outside the bound on the side their advantage pushes toward
  are dropped, as PPO would.
- ``grpo`` / ``bnpo`` / ``dr_grpo`` / ``dapo`` (PPO-clip):
  ``-min(r * A, clip(r, 1 - epsilon_low, 1 + epsilon_high) * A)``, optionally dual-clipped
  (``A < 0``: objective at least ``c * A``). A token whose ratio has left the clip range on the side
  its advantage pushes toward gets *zero* gradient. The four names differ only in their reduction.
"""

from __future__ import annotations

import torch

from .common import log_importance_ratio
from .registry import LossConfig, LossOutput, register_loss


def cispo_bounds(config: LossConfig) -> tuple[float | None, float]:
    """(floor, ceiling) of CISPO's importance weight under the configured convention."""
    if config.cispo_clip_convention == "cap":
        return None, config.epsilon_high
    if config.cispo_clip_convention == "offset":
        low = None if config.cispo_epsilon_low is None else 1.0 - config.cispo_epsilon_low
        return low, 1.0 + config.epsilon_high
    raise ValueError(f"unknown cispo_clip_convention {config.cispo_clip_convention!r}; allowed: 'cap', 'offset'")


def ppo_zero_gradient(ratio: torch.Tensor, advantages: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Tokens to which symmetric PPO clipping ``clip(r, 1 - epsilon, 1 + epsilon)`` gives no gradient."""
    return ((ratio > 1 + epsilon) & (advantages > 0)) | ((ratio < 1 - epsilon) & (advantages < 0))


@register_loss("cispo", reduction="global_token_mean")
def cispo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: LossConfig,
) -> LossOutput:
    low, high = cispo_bounds(config)
    log_ratio = log_importance_ratio(log_probs, old_log_probs, mask, config.importance_sampling_level)
    ratio = torch.exp(log_ratio.detach())  # may overflow to inf far off-policy: the clamp below absorbs it
    weight = torch.clamp(ratio, min=low, max=high)  # sg(clip(r)): a constant, no gradient
    per_token_loss = -weight * advantages * log_probs
    above = (ratio > high) & (advantages > 0)
    below = (ratio < low) & (advantages < 0) if low is not None else torch.zeros_like(above)
    kept = torch.ones_like(per_token_loss)
    if config.cispo_token_mask:  # Eq. 7: M = 0 where PPO's trust region would stop the push
        kept = (~(above | below)).to(per_token_loss.dtype)
        per_token_loss = per_token_loss * kept
    # The paper's argument made observable: tokens PPO-clip (at epsilon) would silence, still trained here.
    rescued = ppo_zero_gradient(ratio, advantages, config.epsilon_low) & (kept > 0) & (weight > 0)
    return LossOutput(
        per_token_loss=per_token_loss,
        metrics={
            "cispo_clip_ratio": above.float(),  # ms-swift / TRL's name: positive-advantage tokens capped
            "cispo_clip_ratio/low": below.float(),
            "cispo/is_weight_mean": weight,
            "cispo/kept_where_ppo_zeroes": rescued.float(),
        },
        maxima={"cispo/is_ratio_max": ratio, "cispo/is_weight_max": weight},
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
    metrics = {}
    if config.dual_clip_c is not None:
        # Dual clip (Ye et al. 2020): a negative-advantage token with a huge ratio would otherwise
        # contribute an unbounded loss; its objective is floored at c * A (the loss capped at -c * A).
        dual_bound = -config.dual_clip_c * advantages
        dual_clipped = (advantages < 0) & (per_token_loss > dual_bound)
        per_token_loss = torch.where(advantages < 0, torch.min(per_token_loss, dual_bound), per_token_loss)
        metrics["clip_ratio/dual_mean"] = dual_clipped.float()
    is_low_clipped = (ratio < 1 - config.epsilon_low) & (advantages < 0)
    is_high_clipped = (ratio > 1 + config.epsilon_high) & (advantages > 0)
    metrics.update(
        {
            "clip_ratio/low_mean": is_low_clipped.float(),
            "clip_ratio/high_mean": is_high_clipped.float(),
            "clip_ratio/region_mean": (is_low_clipped | is_high_clipped).float(),
        }
    )
    return LossOutput(per_token_loss=per_token_loss, metrics=metrics, maxima={"is_ratio_max": ratio.detach()})


# The PPO-clip family: one per-token loss, four normalisations.
register_loss("grpo", reduction="sequence_mean")(ppo_clip_loss)
register_loss("bnpo", reduction="batch_token_mean")(ppo_clip_loss)
register_loss("dr_grpo", reduction="constant_length")(ppo_clip_loss)
register_loss("dapo", reduction="global_token_mean")(ppo_clip_loss)
