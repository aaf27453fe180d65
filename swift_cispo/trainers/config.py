"""``GRPOConfig``: TRL's GRPO arguments, with CISPO as the default loss and its cap made explicit."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import GRPOConfig as TRLGRPOConfig

from ..losses import available_losses, get_loss

logger = logging.getLogger("swift_cispo")

#: The CISPO cap used when ``epsilon_high`` is not given (ScaleRL's setting; ms-swift's docs too).
DEFAULT_CISPO_EPSILON_HIGH = 5.0

# TRL 1.16 options that its own ``_compute_loss`` implements but this trainer's loss path does not
# (yet). Setting one is an error rather than a silent no-op. Maps field -> its "off" value.
_UNSUPPORTED_TRL_OPTIONS = {
    "off_policy_mask_threshold": None,
    "entropy_coef": 0.0,
    "use_adaptive_entropy": False,
}


@dataclass
class GRPOConfig(TRLGRPOConfig):
    """TRL's ``GRPOConfig`` with ``loss_type`` checked against the loss registry and CISPO's cap defaulted.

    Every TRL option keeps its meaning. What changes:

    - ``loss_type`` defaults to ``cispo`` and must name a registered loss (see
      :func:`swift_cispo.losses.available_losses`).
    - For ``cispo``, ``epsilon_high`` is the absolute cap of the importance weight,
      ``sg(min(r, epsilon_high))`` (ms-swift's and TRL's meaning). When it is not given it is 5.0,
      not ``epsilon`` (0.2) as in TRL and ms-swift, which would silently cap every weight at 0.2.
    """

    loss_type: str = field(
        default="cispo",
        metadata={
            "help": "Per-token policy loss, looked up in the loss registry. Built in: 'cispo' (clipped, "
            "stop-gradient importance weight times log-prob; every token keeps its gradient), and the PPO-clip "
            "family 'grpo' (per-sequence mean), 'bnpo' (local batch token mean), 'dr_grpo' (constant length), "
            "'dapo' (global token mean). Plugins may register more."
        },
    )
    epsilon_high: float | None = field(
        default=None,
        metadata={
            "help": "For cispo: the absolute cap of the importance weight, weight = min(pi/pi_old, epsilon_high); "
            "5.0 caps at 5 (as in ms-swift and TRL; NeMo-RL's ratio_clip_max 5.0 means a cap of 6). Default for "
            "cispo: 5.0. For the PPO-clip losses: the upper clip offset (ratio ceiling 1 + epsilon_high), "
            "defaulting to epsilon."
        },
    )

    def __post_init__(self):
        get_loss(self.loss_type)  # raises with the registered names
        for name, off in _UNSUPPORTED_TRL_OPTIONS.items():
            if getattr(self, name) != off:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not supported by swift_cispo's GRPOTrainer; leave it at {off!r}"
                )
        if self.loss_type == "cispo":
            if self.epsilon_high is None:
                self.epsilon_high = DEFAULT_CISPO_EPSILON_HIGH
                logger.warning(
                    "epsilon_high not set for loss_type=cispo: capping the importance weight at %.1f "
                    "(TRL and ms-swift would fall back to epsilon=%.2f and cap every weight there)",
                    DEFAULT_CISPO_EPSILON_HIGH,
                    self.epsilon,
                )
            elif self.epsilon_high <= 0:
                raise ValueError(
                    f"epsilon_high must be > 0 for loss_type=cispo (it caps the importance weight); got {self.epsilon_high}"
                )
            elif self.epsilon_high < 1:
                logger.warning(
                    "epsilon_high=%s < 1 for cispo: every importance weight, on-policy ones included, is capped "
                    "below 1, which scales the whole gradient down; 5.0 is the usual value",
                    self.epsilon_high,
                )
        super().__post_init__()


__all__ = ["GRPOConfig", "DEFAULT_CISPO_EPSILON_HIGH", "available_losses"]
