"""The loss options' one home: their allowed values, their defaults, and what they do in words.

The trainer's config, the CLI and the log line all go through here; nothing else does arithmetic on
the clip bounds. The flags keep the spelling users bring from ms-swift / TRL (``epsilon``,
``epsilon_high``), whose meaning depends on the loss: for ``cispo`` under the ``cap`` convention
``epsilon_high`` is the importance weight's ceiling itself, everywhere else an offset from 1.
:func:`resolve_loss_config` turns them into a validated :class:`LossConfig`, and
:func:`describe` prints the resulting bounds so a user can check them against the framework they
come from.
"""

from __future__ import annotations

import math
from typing import Any

from .policy import cispo_bounds
from .registry import LossConfig

#: How ``epsilon_high`` bounds CISPO's weight: ``cap`` = min(r, eps_high) (ms-swift, TRL, ScaleRL);
#: ``offset`` = clip(r, 1 - cispo_epsilon_low, 1 + eps_high) (MiniMax-M1, NeMo-RL, verl).
CISPO_CLIP_CONVENTIONS = ("cap", "offset")
#: CISPO's ``epsilon_high`` when none is given: a weight ceiling of 5 in either convention (ScaleRL's
#: cap; SkyRL's and AReaL's offset default of 4.0). TRL and ms-swift fall back to ``epsilon`` (0.2).
DEFAULT_CISPO_EPSILON_HIGH = {"cap": 5.0, "offset": 4.0}
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")

#: resolve_loss_config's parameter -> the config field it is read from (TRL's and this project's fields).
LOSS_ARGUMENTS = {
    "loss_type": "loss_type",
    "epsilon": "epsilon",
    "epsilon_high": "epsilon_high",
    "delta": "delta",
    "importance_sampling_level": "importance_sampling_level",
    "cispo_clip_convention": "cispo_clip_convention",
    "cispo_epsilon_low": "cispo_epsilon_low",
    "cispo_token_mask": "cispo_token_mask",
    "dual_clip_c": "dual_clip_c",
    "sapo_tau_pos": "sapo_temperature_pos",  # TRL's field names; ms-swift's --tau_pos / --tau_neg
    "sapo_tau_neg": "sapo_temperature_neg",
}


def _finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value}")


def resolve_loss_config(
    loss_type: str,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    importance_sampling_level: str = "token",
    cispo_clip_convention: str = "cap",
    cispo_epsilon_low: float | None = None,
    cispo_token_mask: bool = False,
    dual_clip_c: float | None = None,
    sapo_tau_pos: float = 1.0,
    sapo_tau_neg: float = 1.05,
) -> tuple[LossConfig, list[str]]:
    """The validated options of loss ``loss_type``, and notes worth logging (defaults taken, odd values).

    Raises ``ValueError`` with one sentence naming the option and what is allowed. Pure: no logging,
    so a config can be checked as often as needed.
    """
    notes: list[str] = []
    for name, value in (("epsilon", epsilon), ("epsilon_high", epsilon_high), ("delta", delta),
                        ("cispo_epsilon_low", cispo_epsilon_low), ("dual_clip_c", dual_clip_c),
                        ("tau_pos", sapo_tau_pos), ("tau_neg", sapo_tau_neg)):
        _finite(name, value)
    for name, value in (("tau_pos", sapo_tau_pos), ("tau_neg", sapo_tau_neg)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0 (a temperature of SAPO's gate); got {value}")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence'; got {importance_sampling_level!r}")
    if cispo_clip_convention not in CISPO_CLIP_CONVENTIONS:
        raise ValueError(f"cispo_clip_convention must be 'cap' or 'offset'; got {cispo_clip_convention!r}")
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0 (the ratio floor is 1 - epsilon); got {epsilon}")
    if loss_type == "cispo":
        epsilon_high = _cispo_epsilon_high(epsilon, epsilon_high, cispo_clip_convention, notes)
        if cispo_epsilon_low is not None:
            if cispo_clip_convention != "offset":
                raise ValueError("cispo_epsilon_low sets the weight's floor in the offset convention; add --cispo_clip_convention offset")
            if cispo_epsilon_low < 0:
                raise ValueError(f"cispo_epsilon_low must be >= 0 (the floor 1 - cispo_epsilon_low is at most 1); got {cispo_epsilon_low}")
        if importance_sampling_level == "sequence":
            notes.append(
                "importance_sampling_level=sequence with cispo: each sequence shares one (GSPO) ratio, but the loss is "
                "still a token mean, so a sequence counts in proportion to its length; see docs/cispo.md"
            )
        for name, value in (("dual_clip_c", dual_clip_c), ("delta", delta)):
            if value is not None:
                raise ValueError(f"{name} applies to the PPO-clip losses (grpo, bnpo, dr_grpo, dapo), not to cispo")
    else:
        if cispo_token_mask or cispo_epsilon_low is not None:
            name = "cispo_token_mask" if cispo_token_mask else "cispo_epsilon_low"
            raise ValueError(f"{name} applies to loss_type=cispo only; got loss_type={loss_type}")
        epsilon_high = epsilon if epsilon_high is None else epsilon_high  # TRL's fallback for the PPO family
        if epsilon_high < 0:
            raise ValueError(f"epsilon_high must be >= 0 for loss_type={loss_type} (the ratio ceiling is 1 + epsilon_high); got {epsilon_high}")
        if dual_clip_c is not None and dual_clip_c <= 1:
            raise ValueError(f"dual_clip_c must be > 1 (it bounds c * A for negative advantages); got {dual_clip_c}")
    if delta is not None and delta <= 1:
        raise ValueError(f"delta must be > 1 (it caps the unclipped ratio, INTELLECT-2 uses 4); got {delta}")
    config = LossConfig(
        epsilon_low=epsilon,
        epsilon_high=epsilon_high,
        delta=delta,
        importance_sampling_level=importance_sampling_level,
        cispo_clip_convention=cispo_clip_convention,
        cispo_epsilon_low=cispo_epsilon_low,
        cispo_token_mask=cispo_token_mask,
        dual_clip_c=dual_clip_c,
        sapo_tau_pos=sapo_tau_pos,
        sapo_tau_neg=sapo_tau_neg,
    )
    return config, notes


def _cispo_epsilon_high(epsilon: float, epsilon_high: float | None, convention: str, notes: list[str]) -> float:
    if epsilon_high is None:
        epsilon_high = DEFAULT_CISPO_EPSILON_HIGH[convention]
        ceiling = epsilon_high if convention == "cap" else 1 + epsilon_high
        notes.append(
            f"epsilon_high not set for loss_type=cispo: capping the importance weight at {ceiling:.1f} "
            f"(TRL and ms-swift would fall back to epsilon={epsilon:.2f} and cap every weight there)"
        )
    elif convention == "cap" and epsilon_high <= 0:
        raise ValueError(f"epsilon_high must be > 0 for loss_type=cispo (it caps the importance weight); got {epsilon_high}")
    elif convention == "offset" and epsilon_high <= -1:
        raise ValueError(f"epsilon_high must be > -1 in the offset convention (ceiling 1 + epsilon_high > 0); got {epsilon_high}")
    elif convention == "cap" and epsilon_high < 1:
        notes.append(
            f"epsilon_high={epsilon_high} < 1 for cispo: every importance weight, on-policy ones included, is capped "
            "below 1, which scales the whole gradient down; 5.0 is the usual value"
        )
    return epsilon_high


def loss_config_from_args(args: Any) -> LossConfig:
    """The :class:`LossConfig` of a (validated) trainer config: the one place the trainer reads loss options."""
    config, _ = resolve_loss_config(**{name: getattr(args, field) for name, field in LOSS_ARGUMENTS.items()})
    return config


def describe(loss_type: str, config: LossConfig) -> str:
    """The loss's effective bounds in words, e.g. for the run's first log line."""
    if loss_type == "cispo":
        low, high = cispo_bounds(config)
        floor = "no floor" if low is None else f"floor {low:g}"
        text = f"epsilon_high={config.epsilon_high:g}: importance weight clipped to [{floor}, {high:g}], {config.cispo_clip_convention} convention"
        if config.cispo_token_mask:
            text += ", unified token mask"
    elif loss_type == "sapo":
        text = f"soft gate on the ratio, temperatures tau_pos={config.sapo_tau_pos:g}, tau_neg={config.sapo_tau_neg:g}"
    else:
        text = f"ratio clipped to [{1 - config.epsilon_low:g}, {1 + config.epsilon_high:g}]"
        if config.dual_clip_c is not None:
            text += f", dual clip c={config.dual_clip_c:g}"
    if config.delta is not None:
        text += f", unclipped ratio capped at {config.delta:g}"
    if config.importance_sampling_level == "sequence":
        text += ", sequence-level ratios"
    return text
