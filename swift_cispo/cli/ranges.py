"""The allowed values of the numeric flags, in one table: checked right after parsing, shown in --help and docs/cli.md.

A value outside its range stops ``swift rlhf`` (and ``swift rollout`` / ``swift export``) with one
sentence before anything is loaded, so ``--learning_rate -1`` or ``--temperature 0`` cannot reach a
traceback deep inside TRL or transformers. NaN and infinity are refused for every flag listed here;
``epsilon_high``, whose meaning depends on the loss, is checked further by :mod:`swift_cispo.losses`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Range:
    """``low`` / ``high`` bounds (open or closed); ``whole``: an integer; ``also``: extra allowed values (e.g. -1)."""

    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    whole: bool = False
    also: tuple = ()

    @property
    def text(self) -> str:
        kind = "a whole number " if self.whole else ""
        if self.low is not None and self.high is not None:
            bounds = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            bounds = f"{'<' if self.high_open else '<='} {self.high:g}"
        else:
            bounds = "finite"
        extra = "".join(f", or {value}" for value in self.also)
        return f"{kind}{bounds}{extra}"

    def allows(self, value) -> bool:
        if value in self.also:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.whole and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
AT_LEAST_ONE = Range(low=1, whole=True)
FRACTION = Range(low=0, high=1, high_open=True)  # [0, 1)
FINITE = Range()
PORT = Range(low=1, high=65535, whole=True)

#: flag (dataclass field) -> its allowed values. Flags given as None (unset) are not checked.
RANGES: dict[str, Range] = {
    # objective
    "epsilon": NON_NEGATIVE,
    "epsilon_high": FINITE,
    "cispo_epsilon_low": NON_NEGATIVE,
    "dual_clip_c": Range(low=1, low_open=True),
    "delta": Range(low=1, low_open=True),
    "sapo_temperature_pos": POSITIVE,
    "sapo_temperature_neg": POSITIVE,
    "rollout_importance_sampling_threshold": POSITIVE,
    "beta": NON_NEGATIVE,
    "num_iterations": AT_LEAST_ONE,
    "reward_weights": FINITE,
    "top_entropy_quantile": Range(low=0, low_open=True, high=1),
    # rollouts
    "num_generations": Range(low=2, whole=True),
    "num_generations_eval": AT_LEAST_ONE,
    "max_completion_length": AT_LEAST_ONE,
    "temperature": POSITIVE,
    "top_p": Range(low=0, low_open=True, high=1),
    "top_k": Range(low=0, whole=True, also=(-1,)),  # 0 and -1: no top-k cut (TRL's and vLLM's spellings)
    "min_p": Range(low=0, high=1),
    "repetition_penalty": POSITIVE,
    "steps_per_generation": AT_LEAST_ONE,
    "generation_batch_size": AT_LEAST_ONE,
    "max_resample_times": AT_LEAST_ONE,
    "max_turns": AT_LEAST_ONE,
    "thinking_budget": AT_LEAST_ONE,
    # vLLM
    "vllm_server_port": PORT,
    "vllm_group_port": PORT,
    "vllm_server_timeout": POSITIVE,
    "max_staleness": Range(low=0, high=64, whole=True),
    "npr_pass_rate": Range(low=0, low_open=True, high=1),
    "npr_pass_reward": FINITE,
    "vllm_gpu_memory_utilization": Range(low=0, low_open=True, high=1),
    "vllm_max_model_length": AT_LEAST_ONE,
    "vllm_tensor_parallel_size": AT_LEAST_ONE,
    "vllm_data_parallel_size": AT_LEAST_ONE,
    "vllm_max_lora_rank": AT_LEAST_ONE,
    # optimisation
    "per_device_train_batch_size": AT_LEAST_ONE,
    "per_device_eval_batch_size": AT_LEAST_ONE,
    "gradient_accumulation_steps": AT_LEAST_ONE,
    "learning_rate": POSITIVE,
    "warmup_steps": NON_NEGATIVE,
    "warmup_ratio": FRACTION,
    "weight_decay": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE,
    "adam_beta1": FRACTION,
    "adam_beta2": FRACTION,
    "adam_epsilon": POSITIVE,
    "num_train_epochs": POSITIVE,
    "max_steps": Range(low=1, whole=True, also=(-1,)),
    "seed": Range(low=0, whole=True),
    # output
    "logging_steps": POSITIVE,
    "save_steps": POSITIVE,
    "eval_steps": POSITIVE,
    "save_total_limit": AT_LEAST_ONE,
    # data
    "split_dataset_ratio": FRACTION,
    "max_length": AT_LEAST_ONE,
    "dataloader_num_workers": Range(low=0, whole=True),
    "dataset_num_proc": AT_LEAST_ONE,
    # LoRA
    "lora_rank": AT_LEAST_ONE,
    "lora_alpha": POSITIVE,
    "lora_dropout": FRACTION,
    # built-in rewards
    "cosine_max_len": AT_LEAST_ONE,
    "repetition_n_grams": AT_LEAST_ONE,
    "repetition_max_penalty": Range(high=0),
    "soft_max_length": AT_LEAST_ONE,
    "soft_cache_length": AT_LEAST_ONE,
    # swift rollout
    "port": PORT,
}


def allowed_text(name: str) -> str | None:
    """``Allowed: > 0.`` for a flag of the table (what --help and docs/cli.md print), else None."""
    rule = RANGES.get(name)
    return f"Allowed: {rule.text}." if rule else None


def check_ranges(*argument_objects) -> None:
    """The first flag of the parsed dataclasses whose value is outside its range, as one UserError sentence."""
    for arguments in argument_objects:
        for field in dataclasses.fields(arguments):
            rule = RANGES.get(field.name)
            value = getattr(arguments, field.name)
            if rule is None or value is None:
                continue
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if not rule.allows(item):
                    raise UserError(f"--{field.name} {item} is out of range; allowed: {rule.text}")
