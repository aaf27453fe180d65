"""ms-swift's ``swift rlhf --rlhf_type grpo`` flags: every one is accepted, acted on, or refused in one sentence.

The catalogue (``msswift_flags.yaml``, read from ms-swift 4.6.0.dev0's command-line documentation and
argument classes) records for each ms-swift GRPO flag its ms-swift default and what it does here:

- ``supported`` / ``differs``: a flag of this CLI (same meaning, or the stated difference);
- ``no_effect``: accepted, and the start-up log says why it changes nothing here;
- ``refused`` / ``not_built``: accepted at its ms-swift default; any other value stops the run before
  any compute with one sentence naming the flag and why (another algorithm, missing hardware, or a
  feature not built yet).

The flags this CLI implements live in the argument dataclasses; the rest are declared from the
catalogue, so ``--help``, docs/cli.md and docs/migrating-from-ms-swift.md all come from one place.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

logger = logging.getLogger("swift_cispo")

CATALOGUE_PATH = Path(__file__).with_name("msswift_flags.yaml")
#: Where the catalogue's facts come from.
MSSWIFT_SOURCE = "modelscope/ms-swift 4.6.0.dev0, commit 3602360a562313afbf2ef6065fdf61f271a2c5b9"
STATUSES = ("supported", "differs", "no_effect", "refused", "not_built")


@dataclass(frozen=True)
class MsSwiftFlag:
    name: str
    section: str
    msswift_default: object
    status: str
    note: str
    meaning: str = ""


@functools.lru_cache(maxsize=1)
def catalogue() -> dict[str, MsSwiftFlag]:
    import yaml

    rows = yaml.safe_load(CATALOGUE_PATH.read_text(encoding="utf-8"))
    return {row["name"]: MsSwiftFlag(**row) for row in rows}


@dataclass
class MsSwiftArguments:
    """ms-swift GRPO flags implemented here that are neither model/data flags nor GRPOConfig fields."""

    warmup_ratio: float = field(
        default=0.0,
        metadata={"help": "Share of the training steps, in [0, 1), over which the learning rate rises linearly from 0 "
                  "(transformers' warmup_steps given as a ratio). Not with --warmup_steps."},
    )
    sequence_parallel_size: int = field(
        default=1, metadata={"help": "Sequence parallelism (ms-swift: split long sequences over devices). Only 1 is built."}
    )
    loss_scale: str = field(
        default="last_round",
        metadata={"help": "Which tokens carry loss weight. Every completion token has weight 1 here, which is both "
                  "ms-swift's 'last_round' (its GRPO default) and 'default' for single-turn completions; the "
                  "agent/think strategies are not built.", "choices": ["last_round", "default"]},
    )
    padding_free: bool = field(
        default=False,
        metadata={"help": "ms-swift: flatten a batch to save padding memory (same loss). Accepted; batches are padded "
                  "here, so memory use is as without it."},
    )
    move_model_batches: int | None = field(
        default=None,
        metadata={"help": "ms-swift: move the weights to vLLM in this many groups of layers to bound peak memory. "
                  "Accepted; weights are synced here as one state dict (colocate) or by --vllm_weight_transport."},
    )
    vllm_enable_lora: bool = field(
        default=False,
        metadata={"help": "ms-swift: give vLLM the LoRA adapter instead of merged weights. Accepted; LoRA runs sync "
                  "merged weights here, which generates the same tokens."},
    )
    log_entropy: bool = field(
        default=False,
        metadata={"help": "Log the completion tokens' entropy. Always on here: the 'entropy' metric is logged every step."},
    )
    log_rollout_offpolicy_metrics: bool = field(
        default=False,
        metadata={"help": "Log the sampler/trainer mismatch. Here every vLLM rollout logs it, with or without this flag, "
                  "as sampling/sampling_logp_difference/mean and /max (TRL's); ms-swift's KL, PPL and chi-squared "
                  "diagnostics are not computed."},
    )
    offload_optimizer: bool = field(
        default=False,
        metadata={"help": "ms-swift: move the optimizer state to CPU memory while vLLM generates. On a CPU-only run it "
                  "is already there (no effect); on a GPU not built yet (use --deepspeed zero2_offload)."},
    )


def _declared_help(flag: MsSwiftFlag) -> str:
    what = {"no_effect": "accepted, no effect here", "refused": "only its ms-swift default is accepted",
            "not_built": "only its ms-swift default is accepted until it is built"}[flag.status]
    meaning = f"ms-swift: {flag.meaning}. " if flag.meaning else f"ms-swift {flag.section} flag. "
    return f"{meaning}Default {flag.msswift_default!r}; {what}: {flag.note}."


def declared_arguments_class(implemented: set[str]) -> type:
    """A dataclass declaring every catalogue flag this CLI does not implement, taking any values."""
    spec = []
    for flag in catalogue().values():
        if flag.name in implemented or flag.status in ("supported", "differs"):
            continue
        spec.append((flag.name, "list[str] | None", field(default=None, metadata={"help": _declared_help(flag)})))
    return dataclasses.make_dataclass("MsSwiftDeclaredArguments", spec)


def _same_value(tokens: list[str], default) -> bool:
    """Whether command-line tokens spell ms-swift's default (``true``/``True``, ``1e-5``/``0.00001``...)."""
    values = default if isinstance(default, list) else [default]
    if default is None or default == []:
        return all(t.lower() in ("none", "null", "") for t in tokens)
    if len(tokens) != len(values):
        return False
    for token, value in zip(tokens, values):
        if isinstance(value, bool):
            if token.lower() not in (("true", "1") if value else ("false", "0")):
                return False
        elif isinstance(value, (int, float)):
            try:
                if float(token) != float(value):
                    return False
            except ValueError:
                return False
        elif token.strip("'\"") != str(value):
            return False
    return True


def check_declared(declared) -> list[str]:
    """Refuse a non-default value of a refused / not-built flag; the no-effect flags given, as log notes."""
    notes = []
    flags = catalogue()
    for name, tokens in dataclasses.asdict(declared).items():
        if tokens is None:
            continue
        flag = flags[name]
        if flag.status == "no_effect":
            notes.append(f"--{name}: no effect here: {flag.note}")
        elif not _same_value(tokens, flag.msswift_default):
            given = " ".join(tokens)
            lead = "is not built yet" if flag.status == "not_built" else "is not supported here"
            raise UserError(f"--{name} {given} {lead}: {flag.note} (only its ms-swift default {flag.msswift_default!r} is accepted)")
    return notes


def apply(ms, model_args, data_args, train_args, given: set[str]) -> list[str]:
    """Check the implemented ms-swift flags and fold them into the other arguments; returns no-effect notes."""
    import torch

    notes = []
    has_cuda = torch.cuda.is_available() and not train_args.use_cpu
    if ms.sequence_parallel_size != 1:
        raise UserError(f"--sequence_parallel_size {ms.sequence_parallel_size} is not built yet: only 1 (no sequence parallelism) runs here")
    if ms.warmup_ratio:
        if "warmup_steps" in given:
            raise UserError("give --warmup_ratio or --warmup_steps, not both")
        train_args.warmup_steps = ms.warmup_ratio  # transformers 5 reads a float in [0, 1) as a ratio
    notes += _warmup_without_schedule(train_args, given)
    _estimator_defaults(train_args, given)
    notes += _evaluation_without_data(train_args, data_args)
    _one_rollout_server(train_args)
    if ms.offload_optimizer and has_cuda:
        raise UserError("--offload_optimizer on a GPU is not built yet; keep the optimizer state in CPU memory with --deepspeed zero2_offload or zero3_offload")
    if ms.offload_optimizer:
        notes.append("--offload_optimizer: no effect here: this run has no GPU, the optimizer state already lives in CPU memory")
    for name, text in (("padding_free", "batches are padded here (same loss, no memory saved)"),
                       ("move_model_batches", "weights are synced to vLLM as one state dict or by --vllm_weight_transport"),
                       ("vllm_enable_lora", "LoRA runs sync merged weights to vLLM"),
                       ("log_entropy", "entropy is always logged"),
                       ("log_rollout_offpolicy_metrics", "every vLLM rollout logs sampling/sampling_logp_difference/mean and /max; ms-swift's KL/PPL/chi-squared diagnostics are not computed")):
        if name in given and getattr(ms, name) not in (None, False):
            notes.append(f"--{name}: no effect here: {text}")
    notes += _offload_and_sleep(train_args, has_cuda)
    _attention(model_args, has_cuda)
    _system_file(data_args)
    if data_args.agent_template is not None:
        from ..agent_templates import get_agent_template

        get_agent_template(data_args.agent_template)  # an unknown name is refused here, before any data or weights load
    if data_args.max_length is not None and data_args.max_length < 1:
        raise UserError(f"--max_length must be >= 1 token; got {data_args.max_length}")
    if data_args.dataset_num_proc < 1:
        raise UserError(f"--dataset_num_proc must be >= 1; got {data_args.dataset_num_proc}")
    if data_args.stop_words and not train_args.use_vllm:
        raise UserError("--stop_words needs vLLM rollouts here (--use_vllm true); stopping transformers' generate on strings is not built yet")
    return notes


def _warmup_without_schedule(train_args, given: set[str]) -> list[str]:
    """transformers' `constant` schedule has no warmup phase: a warmup given with it would be dropped without a word."""
    schedule = getattr(train_args.lr_scheduler_type, "value", train_args.lr_scheduler_type)
    warmup = [f"--{name}" for name in ("warmup_steps", "warmup_ratio") if name in given]
    if schedule == "constant" and train_args.warmup_steps and warmup:
        return [f"{'/'.join(warmup)}: no effect here: --lr_scheduler_type constant has no warmup phase "
                "(constant_with_warmup has one)"]  # fmt: skip
    return []


def _evaluation_without_data(train_args, data_args) -> list[str]:
    """ms-swift turns evaluation off when there is nothing to evaluate on (its examples set eval_strategy anyway)."""
    strategy = str(getattr(train_args.eval_strategy, "value", train_args.eval_strategy))
    if strategy == "no" or data_args.split_dataset_ratio > 0:
        return []
    train_args.eval_strategy = "no"
    return [f"--eval_strategy {strategy}: there is no evaluation set (--split_dataset_ratio 0), so evaluation is off, as in "
            "ms-swift; hold rows out with --split_dataset_ratio to evaluate"]


def _one_rollout_server(train_args) -> None:
    """ms-swift takes lists of rollout servers; one is built here."""
    for name in ("vllm_server_host", "vllm_server_port"):
        values = getattr(train_args, name)
        if isinstance(values, list):
            if len(values) > 1:
                raise UserError(f"--{name} with {len(values)} servers is not built yet: rollouts come from one `swift rollout` server here")
            setattr(train_args, name, values[0])


def _estimator_defaults(train_args, given: set[str]) -> None:
    """ms-swift binds --scale_rewards' and --kl_in_reward's defaults to --advantage_estimator."""
    from ..rewards.advantages import DEFAULT_SCALE

    estimator = train_args.advantage_estimator
    if "scale_rewards" not in given:
        train_args.scale_rewards = DEFAULT_SCALE[estimator]
    if "kl_in_reward" not in given:
        train_args.kl_in_reward = estimator != "grpo"
    other = {"real": "REAL", "fipo": "FIPO", "vespo": "VESPO", "luspo": "LUSPO"}
    if train_args.loss_type in other:
        raise UserError(f"--loss_type {train_args.loss_type}: {other[train_args.loss_type]} is another algorithm this project does not implement; "
                        "choose cispo, grpo, bnpo, dr_grpo, dapo or sapo")
    if train_args.loss_type == "sapo" and min(train_args.sapo_temperature_pos, train_args.sapo_temperature_neg) <= 0:
        raise UserError("--tau_pos and --tau_neg (SAPO's gate temperatures) must be > 0")


def _offload_and_sleep(train_args, has_cuda: bool) -> list[str]:
    """ms-swift's sleep_level 0/1/2 and offload_model, mapped onto this trainer's GPU-only options."""
    notes = []
    colocate = train_args.use_vllm and train_args.vllm_mode == "colocate" and not train_args.async_generate
    if train_args.sleep_level not in (0, 1, 2):
        raise UserError(f"--sleep_level must be 0, 1 or 2; got {train_args.sleep_level}")
    if train_args.sleep_level and not colocate:
        notes.append(f"--sleep_level {train_args.sleep_level}: vLLM runs outside this process (or not at all), so it is 0, as in ms-swift")
        train_args.sleep_level = 0
    elif train_args.sleep_level and not has_cuda:
        notes.append(f"--sleep_level {train_args.sleep_level}: this run has no GPU memory to free, so it is 0")
        train_args.sleep_level = 0
    elif train_args.sleep_level == 1:
        notes.append("--sleep_level 1 runs as 2: vLLM drops its weights too and they are re-synced from the trainer on wake-up")
        train_args.sleep_level = 2
    if train_args.offload_model and not (colocate and has_cuda):
        where = "this run has no GPU, the model already lives in CPU memory" if not has_cuda else "vLLM does not share this process's GPU"
        notes.append(f"--offload_model: no effect here: {where}")
        train_args.offload_model = False
    return notes


def _attention(model_args, has_cuda: bool) -> None:
    if model_args.attn_impl == "flash_attn":
        model_args.attn_impl = "flash_attention_2"  # ms-swift's compatibility spelling
    if model_args.attn_impl in ("flash_attention_2", "flash_attention_3"):
        import importlib.util

        if not has_cuda:
            raise UserError(f"--attn_impl {model_args.attn_impl} needs a CUDA GPU and this run has none; use sdpa or eager")
        package = "flash_attn" if model_args.attn_impl == "flash_attention_2" else "flash_attn_interface"
        if importlib.util.find_spec(package) is None:
            raise UserError(f"--attn_impl {model_args.attn_impl} needs the {package} package, which is not installed; use sdpa")


def _system_file(data_args) -> None:
    """ms-swift reads ``--system PATH`` when the path is a file (its examples pass prompt.txt)."""
    if data_args.system and len(data_args.system) < 4096:
        path = Path(data_args.system).expanduser()
        try:
            is_file = path.is_file()
        except OSError:
            is_file = False
        if is_file:
            data_args.system = path.read_text(encoding="utf-8").strip()


def template_config(data_args, use_vllm: bool) -> dict:
    """GRPOConfig fields from the template/generation flags: chat template kwargs and stop strings."""
    fields = {}
    if data_args.enable_thinking is not None:
        fields["chat_template_kwargs"] = {"enable_thinking": data_args.enable_thinking}
    if data_args.stop_words and use_vllm:
        fields["generation_kwargs"] = {"stop": list(data_args.stop_words)}
    return fields


def log_notes(notes: list[str]) -> None:
    for note in notes:
        logger.info("ms-swift flag %s", note)
