"""Per-token policy losses, their registry, and the reductions that normalise them."""

from . import policy, sapo  # noqa: F401  (registers the built-in losses)
from .common import k3_kl, log_importance_ratio
from .policy import cispo_bounds, ppo_zero_gradient
from .options import CISPO_CLIP_CONVENTIONS, DEFAULT_CISPO_EPSILON_HIGH, describe, loss_config_from_args, resolve_loss_config
from .rollout import CISPO_ANCHORS, ROLLOUT_CORRECTION_MODES, importance_denominator, rollout_correction
from .reduction import REDUCTIONS, ReductionContext
from .registry import LossConfig, LossOutput, LossSpec, available_losses, get_loss, register_loss

__all__ = [
    "CISPO_CLIP_CONVENTIONS",
    "DEFAULT_CISPO_EPSILON_HIGH",
    "describe",
    "loss_config_from_args",
    "resolve_loss_config",
    "ROLLOUT_CORRECTION_MODES",
    "CISPO_ANCHORS",
    "importance_denominator",
    "LossConfig",
    "LossOutput",
    "LossSpec",
    "REDUCTIONS",
    "ReductionContext",
    "available_losses",
    "cispo_bounds",
    "ppo_zero_gradient",
    "rollout_correction",
    "get_loss",
    "k3_kl",
    "log_importance_ratio",
    "register_loss",
]
