"""``--recipe NAME``: a published recipe's settings at once, each printed, each overridden by its own flag.

``scalerl`` is ScaleRL's final recipe (Khatri et al., "The Art of Scaling Reinforcement Learning Compute
for LLMs", arXiv 2510.13786, Sec. 4), component by component; docs/scalerl.md sets it beside the paper's table.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ScaleRL's split of the completion budget: 12,288 thinking + 2,048 answer tokens (of 14,336).
SCALERL_THINKING_SHARE = 12288 / (12288 + 2048)
#: Below this completion budget the interruption phrase and an answer do not fit after the thinking share.
SCALERL_MIN_LENGTH_FOR_INTERRUPTIONS = 1024


@dataclass(frozen=True)
class Setting:
    """One flag of a recipe: its value (or a function of the other flags giving it, None: not applicable) and
    the paper's words for it."""

    flag: str
    value: object
    paper: str


def _staleness(args) -> int | None:
    # only a rollout server generates while the trainer trains; colocate would make rollouts stale for no speed
    return 8 if args.use_vllm and args.vllm_mode == "server" else None


def _thinking_budget(args) -> int | None:
    if args.max_completion_length < SCALERL_MIN_LENGTH_FOR_INTERRUPTIONS:
        return None
    return int(args.max_completion_length * SCALERL_THINKING_SHARE)


SCALERL = (
    Setting("loss_type", "cispo", "loss: CISPO"),
    Setting("epsilon_high", 5.0, "importance weight sg(clip(r, 0, 5)): epsilon_max 5"),
    Setting("cispo_clip_convention", "cap", "clip(r, 0, epsilon_max): a cap, no floor"),
    Setting("max_staleness", _staleness, "PipelineRL-8: the trainer at most 8 steps ahead of the generators"),
    Setting("cast_lm_head_to_fp32", True, "FP32 LM head, in the trainer and the generator"),
    Setting("loss_aggregation", "prompt_mean", "prompt-level loss aggregation"),
    Setting("scale_rewards", "batch", "batch-level advantage normalisation"),
    Setting("zero_variance_filter", True, "zero-variance filtering"),
    Setting("no_positive_resampling", True, "No-Positive-Resampling"),
    Setting("npr_pass_rate", 0.9, "pass rate 0.9 and up: not sampled again"),
    Setting("thinking_budget", _thinking_budget, "forced interruptions: 12,288 thinking + 2,048 answer tokens"),
)

RECIPES: dict[str, tuple[Setting, ...]] = {"scalerl": SCALERL}

#: Why a setting that depends on other flags was not applied.
_NOT_APPLIED = {
    "max_staleness": "needs a rollout server (--use_vllm true --vllm_mode server), which generates while the trainer "
    "trains; with colocate or HF generate rollouts would only grow stale",
    "thinking_budget": f"--max_completion_length is below {SCALERL_MIN_LENGTH_FOR_INTERRUPTIONS}: no room for the "
    "interruption phrase and an answer; give --thinking_budget to force it",
}


def apply(name: str | None, args, given: set[str]) -> list[str]:
    """Set the recipe's flags on ``args`` where the command line did not give them; one line per flag."""
    if name is None:
        return []
    lines = []
    for setting in RECIPES[name]:
        if setting.flag in given:
            lines.append(f"{setting.flag}={getattr(args, setting.flag)!r} (yours; the recipe's: {setting.paper})")
            continue
        value = setting.value(args) if callable(setting.value) else setting.value
        if value is None:
            lines.append(f"{setting.flag} not set: {_NOT_APPLIED[setting.flag]} ({setting.paper})")
            continue
        setattr(args, setting.flag, value)
        lines.append(f"{setting.flag}={value!r} ({setting.paper})")
    return lines
