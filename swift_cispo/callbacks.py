"""The guard that stops training before a non-finite gradient reaches the weights."""

from __future__ import annotations

import math

from transformers import TrainerCallback

from .errors import NonFiniteError


class NonFiniteGradientGuard(TrainerCallback):
    """Stops training before an optimizer step whose gradients hold NaN or inf (the loss itself was finite).

    The loss and log-probs are checked by the trainer; this catches what only backward produces.
    Not used with fp16, whose loss scaler expects overflows and skips those steps itself.
    """

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        if model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]  # none under DeepSpeed: it holds them
        if not grads or math.isfinite(float(torch.nn.utils.get_total_norm(grads))):
            return
        name = next(n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all())
        raise NonFiniteError(
            f"step {state.global_step + 1}: the gradient of {name} is NaN or inf, so training stopped before the "
            "optimizer step; the weights and the checkpoints saved so far are unchanged"
        )
