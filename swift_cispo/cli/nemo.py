"""NeMo-RL's ``loss_fn:`` block, accepted verbatim in a ``swift rlhf`` YAML config.

NeMo-RL's CISPO recipe configures the loss as::

    loss_fn:
      use_cispo: true
      token_level_loss: true
      sequence_level_importance_ratios: false
      force_on_policy_ratio: false
      ratio_clip_min: 1.0
      ratio_clip_max: 5.0
      ratio_clip_c: null

with NeMo's meaning: the weight is ``clip(r, 1 - ratio_clip_min, 1 + ratio_clip_max)`` (here [0, 6]).
This module turns such a block into the equivalent ``swift rlhf`` flags and enforces NeMo's own
guards on CISPO as clear errors.
"""

from __future__ import annotations

from ..errors import UserError

_KNOWN_KEYS = (
    "use_cispo",
    "token_level_loss",
    "sequence_level_importance_ratios",
    "force_on_policy_ratio",
    "ratio_clip_min",
    "ratio_clip_max",
    "ratio_clip_c",
    "use_importance_sampling_correction",
    "truncated_importance_sampling_ratio",
    "reference_policy_kl_penalty",
)


def loss_fn_to_flags(block: dict, source: str) -> list[str]:
    """The ``swift rlhf`` flags equivalent to a NeMo-RL ``loss_fn`` block."""
    unknown = sorted(set(block) - set(_KNOWN_KEYS))
    if unknown:
        raise UserError(
            f"{source}: loss_fn keys not supported: {', '.join(unknown)}; supported: {', '.join(_KNOWN_KEYS)}"
        )
    cispo = bool(block.get("use_cispo", False))
    token_level = block.get("token_level_loss", True)
    sequence_ratios = bool(block.get("sequence_level_importance_ratios", False))
    clip_c = block.get("ratio_clip_c")
    if cispo:
        # NeMo-RL refuses these combinations with CISPO; so do we, with the reason.
        if sequence_ratios:
            raise UserError(f"{source}: use_cispo cannot be combined with sequence_level_importance_ratios: true (CISPO weighs each token)")
        if block.get("force_on_policy_ratio"):
            raise UserError(f"{source}: use_cispo cannot be combined with force_on_policy_ratio: true (the clipped off-policy weight is CISPO's point)")
        if clip_c is not None:
            raise UserError(f"{source}: use_cispo cannot be combined with ratio_clip_c (dual clip is a PPO-clip option)")
        if not token_level:
            raise UserError(f"{source}: use_cispo needs token_level_loss: true (CISPO normalises by the batch's token count)")
    elif block.get("force_on_policy_ratio"):
        raise UserError(f"{source}: force_on_policy_ratio is not supported; remove it or set it to false")

    flags: list[str] = []
    low, high = block.get("ratio_clip_min"), block.get("ratio_clip_max")
    if cispo:
        flags += ["--loss_type", "cispo", "--cispo_clip_convention", "offset"]
        if low is not None:
            flags += ["--cispo_epsilon_low", str(low)]
        if high is not None:
            flags += ["--epsilon_high", str(high)]
    else:
        flags += ["--loss_type", "dapo" if token_level else "grpo"]
        if low is not None:
            flags += ["--epsilon", str(low)]
        if high is not None:
            flags += ["--epsilon_high", str(high)]
        if clip_c is not None:
            flags += ["--dual_clip_c", str(clip_c)]
    if sequence_ratios:
        flags += ["--importance_sampling_level", "sequence"]
    if "use_importance_sampling_correction" in block:
        if block["use_importance_sampling_correction"]:
            # NeMo multiplies by exp(prev - generation) log-probs, untruncated unless a ratio is given.
            threshold = block.get("truncated_importance_sampling_ratio")
            flags += ["--rollout_importance_sampling_mode", "token_truncate"]
            flags += ["--rollout_importance_sampling_threshold", str(threshold if threshold is not None else float("inf"))]
        else:
            flags += ["--rollout_importance_sampling_mode", "none"]
    if block.get("reference_policy_kl_penalty") is not None:
        flags += ["--beta", str(block["reference_policy_kl_penalty"])]
    return flags
