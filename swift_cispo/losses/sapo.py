"""SAPO (Soft Adaptive Policy Optimization, Gao et al. 2025, arXiv 2511.20347).

Instead of PPO's hard clip, each token's ratio ``r = pi_theta / pi_old`` passes through a smooth gate

    f(r) = sigmoid(tau * (r - 1)) * 4 / tau,      loss = -f(r) * A,

with ``tau = tau_pos`` for ``A > 0`` and ``tau_neg`` for ``A <= 0``. Its gradient is
``-A * w(r) * r * grad log pi`` with ``w(r) = 4 sigmoid(tau (r - 1)) (1 - sigmoid(tau (r - 1)))``:
exactly the policy gradient on-policy (``w(1) = 1``), and fading smoothly, never to a hard zero, as
``r`` leaves 1. A larger ``tau`` fades faster; ``tau_neg > tau_pos`` restrains negative-advantage
tokens more, since pushing a token's probability down can disturb many others (the paper's argument).
ms-swift calls the temperatures ``tau_pos``/``tau_neg`` (defaults 1.0 / 1.05); TRL ``sapo_temperature_*``.
The sequence mean of the token losses (``grpo``'s reduction) is used, as in ms-swift and TRL.
"""

from __future__ import annotations

import torch

from .common import log_importance_ratio
from .registry import LossConfig, LossOutput, register_loss


def sapo_gate(ratio: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """The soft gate f(r) = sigmoid(tau (r - 1)) * 4 / tau (value 2 / tau at r = 1, slope 1 there)."""
    return torch.sigmoid(temperature * (ratio - 1)) * 4 / temperature


@register_loss("sapo", reduction="sequence_mean")
def sapo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: LossConfig,
) -> LossOutput:
    log_ratio = log_importance_ratio(log_probs, old_log_probs, mask, config.importance_sampling_level)
    ratio = torch.exp(log_ratio)
    temperature = torch.where(advantages > 0, config.sapo_tau_pos, config.sapo_tau_neg)
    per_token_loss = -sapo_gate(ratio, temperature) * advantages
    # share of the on-policy gradient each token keeps: 4 s (1 - s), 1 at r = 1
    s = torch.sigmoid(temperature * (ratio.detach() - 1))
    return LossOutput(
        per_token_loss=per_token_loss,
        metrics={"sapo/gradient_weight_mean": 4 * s * (1 - s)},
        maxima={"is_ratio_max": ratio.detach()},
    )
