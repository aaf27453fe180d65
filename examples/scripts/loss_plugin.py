"""A loss plugin for `swift rlhf --external_plugins examples/scripts/loss_plugin.py --loss_type gpg`.

It registers `gpg`, the plain policy gradient of GPG (Chu et al. 2025, "GPG: A Simple and Strong
Reinforcement Learning Baseline"): `-A * log pi` on the group-relative advantages, with no
importance weight and no clipping, averaged over the completion tokens of the optimizer step. It
assumes on-policy rollouts (the defaults: one pass, one optimizer step per generation); to show
how far a run is from that, it logs the ratio pi / pi_old, which it does not use.
"""

import torch

from swift_cispo import LossOutput, register_loss


@register_loss("gpg", reduction="global_token_mean")
def gpg(log_probs, old_log_probs, advantages, mask, config):
    ratio = torch.exp(log_probs - old_log_probs).detach()
    return LossOutput(
        per_token_loss=-advantages * log_probs,
        metrics={"gpg/ratio_mean": ratio},  # logged as its mean over the step's completion tokens
        maxima={"gpg/ratio_max": ratio},  # logged as its maximum
    )
