"""The trainer and its config. Loaded on first use: TRL's trainer and vLLM module take seconds to import,
and ``swift_cispo.trainers.config`` alone does not need them."""

from __future__ import annotations

import importlib

_HOMES = {
    "CISPOTrainer": ".grpo_trainer",
    "GRPOTrainer": ".grpo_trainer",
    "DEFAULT_CISPO_EPSILON_HIGH": ".config",
    "GRPOConfig": ".config",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_HOMES)
