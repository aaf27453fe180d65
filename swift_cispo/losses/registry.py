"""Loss registry: a per-token policy loss is a pure function registered under a name.

A loss function has the signature::

    fn(log_probs, old_log_probs, advantages, mask, config: LossConfig) -> LossOutput

over tensors shaped ``(B, T)`` (``advantages`` may be ``(B, 1)``). It returns the per-token loss
and per-token metrics; it never reduces to a scalar. How the per-token loss becomes the scalar that
is back-propagated is a separate, named *reduction* (see :mod:`swift_cispo.losses.reduction`),
chosen when the loss is registered. Adding a loss is one function and one decorator line::

    @register_loss("my_loss", reduction="global_token_mean")
    def my_loss(log_probs, old_log_probs, advantages, mask, config):
        ...
        return LossOutput(per_token_loss=..., metrics={})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from .reduction import REDUCTIONS


@dataclass(frozen=True)
class LossConfig:
    """The options a loss function may read. Built from the trainer's arguments.

    Attributes:
        epsilon_low: lower clip offset of the PPO-clip losses (ratio floor ``1 - epsilon_low``).
        epsilon_high: for the PPO-clip losses the upper offset (ceiling ``1 + epsilon_high``); for
            ``cispo`` the absolute cap of the importance weight (``min(r, epsilon_high)``).
        delta: optional extra upper clip of the unclipped PPO ratio (INTELLECT-2's two-sided clip).
        importance_sampling_level: ``"token"`` (one ratio per token) or ``"sequence"`` (GSPO: the
            geometric mean of the sequence's token ratios, shared by its tokens).
        cispo_clip_convention: ``"cap"`` (ms-swift, TRL, ScaleRL): weight ``min(r, epsilon_high)``;
            ``"offset"`` (MiniMax-M1, NeMo-RL, verl): weight ``clip(r, 1 - cispo_epsilon_low,
            1 + epsilon_high)``.
        cispo_epsilon_low: the lower offset of the ``offset`` convention; ``None`` means no floor
            (MiniMax sets it "large").
        cispo_token_mask: MiniMax-M1 Eq. 7: drop a token when ``A > 0`` and its ratio is above the
            upper bound, or ``A < 0`` and below the lower bound (recovers PPO's trust region).
        dual_clip_c: dual-clip PPO's bound for the PPO-clip losses (``c > 1``): with ``A < 0`` the
            objective is at least ``c * A``. ``None`` disables it.
        sapo_tau_pos, sapo_tau_neg: SAPO's gate temperatures for positive / non-positive advantages.
    """

    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    delta: float | None = None
    importance_sampling_level: str = "token"
    cispo_clip_convention: str = "cap"
    cispo_epsilon_low: float | None = None
    cispo_token_mask: bool = False
    dual_clip_c: float | None = None
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05


@dataclass
class LossOutput:
    """What a loss function returns.

    Attributes:
        per_token_loss: ``(B, T)`` (or ``(B, 1)`` for sequence-level losses) loss before reduction.
        metrics: per-token tensors (broadcastable to ``(B, T)``) that the trainer logs as their mean
            over the completion tokens of the whole batch, e.g. a 0/1 "was clipped" indicator.
        maxima: per-token tensors logged as their maximum over the completion tokens of all ranks.
    """

    per_token_loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    maxima: dict[str, torch.Tensor] = field(default_factory=dict)


class LossFn(Protocol):
    def __call__(
        self,
        log_probs: torch.Tensor,
        old_log_probs: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        config: LossConfig,
    ) -> LossOutput: ...


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function and the reduction it is normalised with."""

    name: str
    fn: LossFn
    reduction: str


_LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, reduction: str = "global_token_mean") -> Callable[[LossFn], LossFn]:
    """Decorator registering ``fn`` as loss ``name``, reduced with the named ``reduction``.

    Re-registering a name replaces the earlier entry, so a plugin file may override a built-in.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of: {', '.join(sorted(REDUCTIONS))}")

    def decorator(fn: LossFn) -> LossFn:
        _LOSSES[name] = LossSpec(name=name, fn=fn, reduction=reduction)
        return fn

    return decorator


def get_loss(name: str) -> LossSpec:
    """Return the registered loss ``name``; the error lists the registered names."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss_type {name!r}; registered loss types: {', '.join(available_losses())}"
        ) from None


def available_losses() -> list[str]:
    """Names of the registered losses, sorted."""
    return sorted(_LOSSES)
