"""Small tensor helpers shared by the losses."""

from __future__ import annotations

import torch


def log_importance_ratio(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor, level: str = "token"
) -> torch.Tensor:
    """``log r = log pi_theta - log pi_old`` per token ``(B, T)``, or per sequence ``(B, 1)``.

    Padded positions get ``log r = 0`` (r = 1): their log-probs are meaningless and an overflowing
    ``exp`` there would turn into NaN gradients even though the loss masks them out.
    ``level="sequence"`` is GSPO's length-normalised ratio: the mean token log-ratio of the sequence.
    """
    log_ratio = torch.where(mask.bool(), log_probs - old_log_probs, torch.zeros_like(log_probs))
    if level == "token":
        return log_ratio
    if level == "sequence":
        return (log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0))
    raise ValueError(f"unknown importance_sampling_level {level!r}; allowed: 'token', 'sequence'")


def k3_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi_theta || pi_ref) estimate ``exp(d) - d - 1`` with ``d = log pi_ref - log pi_theta``
    (Schulman's k3: unbiased, always >= 0), as used by GRPO."""
    # Written out twice rather than through a shared ``delta``: the same graph as TRL's, so that the
    # gradients match TRL's bit for bit (a shared node sums its two incoming gradients in another order).
    return torch.exp(ref_log_probs - log_probs) - (ref_log_probs - log_probs) - 1
