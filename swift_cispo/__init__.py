"""swift-cispo: CISPO (MiniMax-M1's clipped importance-sampling policy optimisation) on TRL's GRPOTrainer."""

from __future__ import annotations

import warnings

__version__ = "0.1.0"

# TRL 1.16 warns on every import that it knows vLLM only up to 0.31. Its vLLM code that we use (the
# colocated engine's setup, weight iteration) is exercised with vllm(-cpu) 0.32 by tests/test_vllm.py.
warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
# DeepSpeed 0.19's ZeRO calls torch collectives that torch 2.13 marks deprecated, once per bucket and step.
warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated")

from .losses import LossConfig, LossOutput, available_losses, get_loss, register_loss
from .rewards import ORM, orms

_TRAINER_NAMES = ("CISPOTrainer", "GRPOConfig", "GRPOTrainer")


def __getattr__(name: str):
    # The trainer pulls in TRL and transformers (seconds to import); load it only when asked for, so
    # the CLI can reject bad flags and `swift_cispo.losses` can be used without that cost.
    if name in _TRAINER_NAMES:
        from . import trainers

        return getattr(trainers, name)
    raise AttributeError(f"module 'swift_cispo' has no attribute {name!r}")


__all__ = [*_TRAINER_NAMES, "LossConfig", "LossOutput", "ORM", "available_losses", "get_loss", "orms", "register_loss"]
