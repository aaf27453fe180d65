"""Rollout importance-sampling correction: the trainer's old policy vs the sampler that generated.

The sampler (vLLM, often another numeric path or a stale weight copy) is not exactly ``pi_old``.
Every token loss is multiplied by ``rho = pi_old / pi_sampler`` (detached), separately from any
weight the loss itself applies, truncated or masked at ``threshold``:

- ``token_truncate``: ``min(rho_t, threshold)``            (TIS)
- ``token_mask``: ``rho_t`` if ``rho_t <= threshold`` else 0   (MIS / IcePop-like)
- ``sequence_truncate`` / ``sequence_mask``: the same with the sequence ratio
  ``prod_t rho_t = exp(sum_t log rho_t)``, shared by the sequence's tokens.
"""

from __future__ import annotations

import torch

ROLLOUT_CORRECTION_MODES = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
CISPO_ANCHORS = ("old", "sampler")


def importance_denominator(old_log_probs: torch.Tensor, sampler_log_probs: torch.Tensor | None, anchor: str) -> torch.Tensor:
    """The log-probabilities CISPO's importance weight divides by.

    ``old``: pi_old, the trainer's own recomputation (the weight sees only the updates since the rollout;
    the sampler's difference is the rollout correction's job). ``sampler``: pi_sampler, what the rollout
    engine reported (ScaleRL; SkyRL's ``cispo_anchor: rollout``), so the one clipped weight absorbs the
    staleness and the sampler/trainer mismatch together. Tokens the sampler did not score (NaN), and rollouts
    with no sampler log-probs at all (transformers' generate samples from pi_old itself), fall back to pi_old.
    """
    if anchor not in CISPO_ANCHORS:
        raise ValueError(f"unknown cispo_anchor {anchor!r}; allowed: {', '.join(CISPO_ANCHORS)}")
    if anchor == "old" or sampler_log_probs is None:
        return old_log_probs
    return torch.where(torch.isnan(sampler_log_probs), old_log_probs, sampler_log_probs).detach()


def rollout_correction(
    old_log_probs: torch.Tensor,
    sampler_log_probs: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    threshold: float,
) -> torch.Tensor:
    """The detached per-token (``(B, T)``) or per-sequence (``(B, 1)``) correction factor."""
    if mode not in ROLLOUT_CORRECTION_MODES or mode == "none":
        raise ValueError(f"unknown rollout correction mode {mode!r}; allowed: {', '.join(ROLLOUT_CORRECTION_MODES[1:])}")
    # Tokens the sampler could not score (NaN) and padding carry no evidence: ratio 1.
    log_rho = torch.nan_to_num(old_log_probs - sampler_log_probs, nan=0.0)
    log_rho = torch.where(mask.bool(), log_rho, torch.zeros_like(log_rho)).detach()
    if mode.startswith("sequence"):
        log_rho = log_rho.sum(-1, keepdim=True)
    rho = torch.exp(log_rho)
    if mode.endswith("truncate"):
        return torch.clamp(rho, max=threshold)
    return torch.where(rho <= threshold, rho, torch.zeros_like(rho))
