"""The ``swift rlhf`` arguments: dataclass fields with help texts, the single source of truth.

The CLI, YAML configs and the docs' flag table all come from these dataclasses. The training
flags are not re-declared here: :func:`training_arguments_class` copies the chosen fields of
:class:`swift_cispo.GRPOConfig` (TRL's fields and ours, with their defaults and help texts).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field

from ..agent_templates import allowed_names as agent_template_names
from ..rewards.builtin import Cosine, Format, Repetition


#: The dtypes ``--torch_dtype`` accepts (``swift rlhf``, ``swift rollout``, ``swift export``); 'auto' keeps the checkpoint's.
TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")


def torch_dtype_field(what: str, advice: str = ""):
    """A command's ``--torch_dtype`` field; ``what`` says what runs in that dtype."""
    named = ", ".join(f"'{name}'" for name in TORCH_DTYPES[1:-1]) + f" or '{TORCH_DTYPES[-1]}'"
    text = f"{what}: 'auto' (the checkpoint's), {named}." + (f" {advice}" if advice else "")
    return field(default="auto", metadata={"help": text, "choices": list(TORCH_DTYPES)})


def _reward_default(orm_class: type, parameter: str):
    """The default of a built-in reward's constructor parameter: the flag's default is written once, there."""
    return inspect.signature(orm_class).parameters[parameter].default


@dataclass
class ModelArguments:
    model: str | None = field(
        default=None,
        metadata={
            "help": "Policy model: a local folder or a model id on the Hugging Face hub. Omit both --model and "
            "--dataset to train the embedded demo."
        },
    )
    torch_dtype: str = torch_dtype_field("Dtype the weights are loaded in")
    train_type: str = field(
        default="full",
        metadata={
            "help": "What is trained: 'full' (all weights) or 'lora' (low-rank adapters through peft; the base weights "
            "stay frozen and the output dir holds the adapter). Alias: --tuner_type.",
            "choices": ["full", "lora"],
        },
    )
    lora_rank: int = field(default=8, metadata={"help": "--train_type lora: rank r of each adapter's A (r x in) and B (out x r)."})
    lora_alpha: int = field(
        default=32, metadata={"help": "--train_type lora: scale of the adapter's output, alpha / r (peft's lora_alpha)."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "--train_type lora: dropout on the adapter's input."})
    target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": "--train_type lora: module names (or name suffixes) that get adapters; 'all-linear' means every "
            "linear layer except the output head."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow the model folder's own Python code to run when it is loaded. Off unless asked for."},
    )
    attn_impl: str | None = field(
        default=None,
        metadata={
            "help": "Attention implementation the model is loaded with (transformers' attn_implementation): 'sdpa', "
            "'eager', 'flash_attention_2' ('flash_attn' is its ms-swift spelling), 'flash_attention_3'. Default: the "
            "model config's. The flash-attn ones need a CUDA GPU and the flash-attn package.",
            "choices": ["sdpa", "eager", "flash_attn", "flash_attention_2", "flash_attention_3"],
        },
    )


@dataclass
class DataArguments:
    dataset: list[str] | None = field(
        default=None,
        metadata={
            "help": "One or more datasets: local .jsonl/.json/.csv/.parquet files, a saved datasets folder, or a hub "
            "dataset id. 'PATH#N' takes N rows (shuffled with --seed, repeated if N exceeds the rows). Rows need a "
            "'prompt' (string or chat messages) or a 'messages' column; every other column reaches the reward "
            "functions as a keyword argument."
        },
    )
    system: str | None = field(
        default=None,
        metadata={
            "help": "System prompt put before every prompt (the prompt becomes a chat conversation). A path to an "
            "existing file (ms-swift's prompt.txt) is read as the prompt."
        },
    )
    agent_template: str | None = field(
        default=None,
        metadata={
            "help": "How a dataset's 'tools' column (a JSON list of tools per row) is written into the prompt's "
            f"system message: ms-swift's agent template of that name, same text ({agent_template_names()}). "
            "react_en, react_zh, react_grpo and toolbench put the tools text in place of the system prompt; hermes "
            "and qwen_* after it. Needed when a row has tools (no per-model default here). See docs/agents.md."
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest prompt in tokens (ms-swift: for GRPO, max_length is the prompt length). Longer prompts are "
            "handled by --truncation_strategy and counted in the log. Default: the model's context (max_position_embeddings) "
            "minus --max_completion_length, the longest prompt that can still be completed."
        },
    )
    truncation_strategy: str = field(
        default="left",
        metadata={
            "help": "What happens to a prompt longer than --max_length: 'left' keeps its last max_length tokens (the "
            "prompt is then rendered text, no longer chat messages), 'delete' drops the row. ms-swift's 'right' and "
            "'split' are refused for GRPO there and here.",
            "choices": ["left", "delete"],
        },
    )
    dataset_num_proc: int = field(
        default=1, metadata={"help": "Processes that format the dataset rows (datasets' map num_proc), >= 1."}
    )
    load_from_cache_file: bool = field(
        default=False,
        metadata={
            "help": "Reuse the datasets library's cache of the formatted rows from an earlier run with the same data "
            "and settings (ms-swift's meaning); off: format them again."
        },
    )
    enable_thinking: bool | None = field(
        default=None,
        metadata={
            "help": "Passed to the chat template as enable_thinking (Qwen3-style hybrid thinking models). Default: the "
            "template's own default. A template that does not read it renders the same prompt."
        },
    )
    stop_words: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Strings that end a completion when generated (vLLM's stop, transformers' stop_strings). "
            "The stop string is kept in the completion."
        },
    )
    columns: str | None = field(
        default=None,
        metadata={
            "help": "Rename dataset columns before use, as a JSON object old -> new, e.g. "
            "'{\"question\": \"prompt\", \"solution\": \"answer\"}' (in a YAML config, a mapping). Applied to every "
            "--dataset that has the old column; a name no dataset has is an error."
        },
    )
    disable_auto_column_mapping: bool = field(
        default=False,
        metadata={
            "help": "Off (ms-swift's default): a dataset with no 'prompt' or 'messages' column takes its first 'query', "
            "'question', 'problem', 'instruction' or 'input' column as the prompt. On: only --columns renames."
        },
    )
    split_dataset_ratio: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of the rows held out (shuffled with --seed) as an evaluation set, scored during training "
            "every --eval_steps steps (--eval_strategy steps is then the default). 0: no evaluation set."
        },
    )


@dataclass
class RLHFArguments:
    rlhf_type: str = field(
        default="grpo",
        metadata={"help": "RL algorithm family; CISPO is a loss of it (--loss_type cispo).", "choices": ["grpo"]},
    )
    recipe: str | None = field(
        default=None,
        metadata={"help": "Set a published recipe's flags at once; each is printed, and a flag you give wins. 'scalerl': "
                  "ScaleRL's final recipe (CISPO with cap 5, max_staleness 8 with a rollout server, FP32 LM head, prompt_mean, batch "
                  "advantage normalisation, zero-variance filtering, No-Positive-Resampling, forced interruptions). "
                  "See docs/scalerl.md.", "choices": ["scalerl"]},
    )
    scaling_fit: bool = field(
        default=False,
        metadata={"help": "Fit ScaleRL's saturating curve R0 + (A - R0) / (1 + (C_mid / C)^B) to the pass rate "
                  "(eval_reward when evaluating, else reward) against the rollouts' tokens as training goes: logs "
                  "fit/A, fit/A_err, fit/B, fit/C_mid every 5 points once there are 7, writes scaling_fit.json, and "
                  "draws scaling_fit.png at the end. Compare finished runs with `swift fit RUN_DIR...`."},
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions by name, from the orms registry (built in: accuracy, cosine, exact_match, format, "
            "react_format, repetition, soft_overlong, toolbench; plugin files add more). Weighted by --reward_weights; "
            "each is logged as rewards/<name>/mean. See docs/rewards.md and docs/agents.md."
        },
    )
    external_plugins: list[str] | None = field(
        default=None,
        metadata={
            "help": "Python files run before training, to register rewards in swift_cispo.rewards.orms or losses "
            "with swift_cispo.register_loss; ms-swift plugin files (from swift.rewards import ORM, orms) run unchanged. "
            "Code runs only from files named here."
        },
    )
    reward_model: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward models (local folders or hub ids), each scored by its --reward_model_plugin and logged as "
            "rewards/<folder name>/mean after the --reward_funcs; --reward_weights covers reward functions then "
            "reward models. A sequence-classification model's first logit is the reward (plugin default); a causal "
            "LM is a judge (plugin genrm, or a plugin file's)."
        },
    )
    reward_model_plugin: list[str] | None = field(
        default=None,
        metadata={
            "help": "Per --reward_model, the registered plugin that scores with it: default (sequence classification), "
            "genrm (a generative judge that ends its verdict with 'Reward: <0..1>'), or one a plugin file adds to "
            "rm_plugins. Missing entries are default."
        },
    )
    # Options of the built-in rewards. Each is the constructor parameter of the same name (see
    # swift_cispo/rewards/builtin.py), where its default lives.
    format_pattern: str = field(
        default=_reward_default(Format, "format_pattern"),
        metadata={
            "help": "The 'format' reward's template: a Python regular expression the whole completion must match "
            "('.' matches newlines too). The default asks for <think>...</think> then <answer>...</answer>."
        },
    )
    cosine_min_len_value_wrong: float = field(
        default=_reward_default(Cosine, "cosine_min_len_value_wrong"),
        metadata={"help": "The 'cosine' reward of a wrong answer of length 0."},
    )
    cosine_max_len_value_wrong: float = field(
        default=_reward_default(Cosine, "cosine_max_len_value_wrong"),
        metadata={"help": "The 'cosine' reward of a wrong answer of length --cosine_max_len or more."},
    )
    cosine_min_len_value_correct: float = field(
        default=_reward_default(Cosine, "cosine_min_len_value_correct"),
        metadata={"help": "The 'cosine' reward of a correct answer of length 0."},
    )
    cosine_max_len_value_correct: float = field(
        default=_reward_default(Cosine, "cosine_max_len_value_correct"),
        metadata={"help": "The 'cosine' reward of a correct answer of length --cosine_max_len or more."},
    )
    cosine_max_len: int | None = field(
        default=None,
        metadata={
            "help": "Length in tokens at which the 'cosine' reward reaches its end values. Default: --max_completion_length."
        },
    )
    repetition_n_grams: int = field(
        default=_reward_default(Repetition, "repetition_n_grams"),
        metadata={"help": "Size of the word n-grams the 'repetition' reward counts."},
    )
    repetition_max_penalty: float = field(
        default=_reward_default(Repetition, "repetition_max_penalty"),
        metadata={
            "help": "The most negative 'repetition' reward (<= 0): the reward is this times the fraction of a "
            "completion's n-grams that repeat an earlier one."
        },
    )
    soft_max_length: int | None = field(
        default=None,
        metadata={
            "help": "L_max of the 'soft_overlong' reward (DAPO): completions this long or longer get -1. Default: "
            "--max_completion_length."
        },
    )
    soft_cache_length: int | None = field(
        default=None,
        metadata={
            "help": "L_cache of the 'soft_overlong' reward (DAPO): the penalty falls linearly from 0 at "
            "L_max - L_cache tokens to -1 at L_max. Required by soft_overlong."
        },
    )


# GRPOConfig fields exposed as flags, in the order --help lists them. Everything else in TRL's and
# transformers' argument classes is left out until this project supports and tests it.
TRAINING_FLAGS = (
    # objective
    "loss_type",
    "epsilon",
    "epsilon_high",
    "cispo_clip_convention",
    "cispo_epsilon_low",
    "cispo_token_mask",
    "importance_sampling_level",
    "dual_clip_c",
    "cispo_anchor",
    "loss_aggregation",
    "zero_variance_filter",
    "no_positive_resampling",
    "npr_pass_rate",
    "npr_pass_reward",
    "rollout_importance_sampling_mode",
    "rollout_importance_sampling_threshold",
    "cast_lm_head_to_fp32",
    "beta",
    "num_iterations",
    "scale_rewards",
    "advantage_estimator",
    "kl_in_reward",
    "reward_weights",
    "mask_truncated_completions",
    "delta",
    "top_entropy_quantile",
    "sapo_temperature_pos",
    "sapo_temperature_neg",
    # rollouts
    "num_generations",
    "max_completion_length",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "steps_per_generation",
    "generation_batch_size",
    "num_generations_eval",
    # vLLM rollouts
    "use_vllm",
    "vllm_mode",
    "vllm_server_host",
    "vllm_server_port",
    "vllm_server_timeout",
    "vllm_server_api_key",
    "vllm_server_api_key_file",
    "vllm_weight_transport",
    "vllm_group_port",
    "async_generate",
    "max_staleness",
    "dynamic_sample",
    "max_resample_times",
    "multi_turn_scheduler",
    "max_turns",
    "thinking_budget",
    "interruption_phrase",
    "use_gym_env",
    "gym_env",
    "vllm_server_pass_dataset",
    "vllm_gpu_memory_utilization",
    "vllm_max_model_length",
    "vllm_tensor_parallel_size",
    "sleep_level",
    "offload_model",
    "ds3_gather_for_generation",
    # optimisation
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "lr_scheduler_kwargs",
    "optim",
    "weight_decay",
    "max_grad_norm",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "num_train_epochs",
    "max_steps",
    "seed",
    "gradient_checkpointing",
    "gradient_checkpointing_kwargs",
    "full_determinism",
    "bf16",
    "fp16",
    "use_cpu",
    # scale-out (docs/distributed.md)
    "deepspeed",
    "ddp_timeout",
    "ddp_backend",
    "ddp_find_unused_parameters",
    # data loading
    "dataloader_num_workers",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    # evaluation (on the --split_dataset_ratio hold-out)
    "eval_strategy",
    "eval_steps",
    "per_device_eval_batch_size",
    "eval_on_start",
    # output
    "output_dir",
    "logging_steps",
    "logging_first_step",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "save_only_model",
    "save_on_each_node",
    "resume_from_checkpoint",
    "report_to",
    "log_completions",
)

# CLI defaults that differ from the dataclass's: a fresh, timestamped output folder is chosen at
# run time (see swift_cispo.cli.rlhf) so that no earlier run is overwritten.
_CLI_DEFAULTS = {"output_dir": None, "report_to": "none", "logging_steps": 5}
# ms-swift's sleep_level 1 is accepted on the command line (see swift_cispo.cli.msswift); the Python API takes 0 or 2.
_CLI_CHOICES = {"sleep_level": [0, 1, 2]}
# ms-swift (and transformers) take several loggers: --report_to tensorboard wandb
# and several rollout servers (--vllm_server_host h1 h2 --vllm_server_port p1 p2), of which one is built here
_CLI_TYPES = {"report_to": list[str], "vllm_server_host": list[str], "vllm_server_port": list[int]}


def training_arguments_class() -> type:
    """A dataclass holding the :data:`TRAINING_FLAGS` fields of :class:`GRPOConfig`, same defaults and help.

    TRL's config takes seconds to import, so it is imported here, when a command is parsed for real,
    not when this module is (the unknown-flag and --help paths use :mod:`swift_cispo.cli.spec`).
    """
    from ..trainers.config import GRPOConfig

    hints = typing.get_type_hints(GRPOConfig)
    by_name = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    spec = []
    for name in TRAINING_FLAGS:
        source = by_name[name]
        metadata = dict(source.metadata)
        hint = hints[name]
        if "dict" in str(hint):  # a JSON object on the command line, parsed by transformers/TRL
            hint = str | None
            metadata["help"] = metadata.get("help", "") + " Give a JSON object."
        if name in _CLI_CHOICES:
            metadata["choices"] = _CLI_CHOICES[name]
        hint = _CLI_TYPES.get(name, hint)
        if name in _CLI_DEFAULTS:
            default = _CLI_DEFAULTS[name]
            if hint in (list[str], list[int]):
                new_field = field(default_factory=lambda default=default: [default], metadata=metadata)
            else:
                new_field = field(default=default, metadata=metadata)
        elif hint in (list[str], list[int]) and not isinstance(source.default, list):
            new_field = field(default_factory=lambda default=source.default: [default], metadata=metadata)
        elif source.default_factory is not dataclasses.MISSING:
            new_field = field(default_factory=source.default_factory, metadata=metadata)
        else:
            new_field = field(default=source.default, metadata=metadata)
        spec.append((name, hint, new_field))
    return dataclasses.make_dataclass("TrainingArguments", spec)


#: ms-swift spells some flags two ways; the second name maps to the first.
ALIASES = {
    "tuner_type": "train_type",
    "vllm_max_model_len": "vllm_max_model_length",
    "vllm_server_group_port": "vllm_group_port",
    "data_parallel_size": "vllm_data_parallel_size",  # swift rollout's engine replicas
    "overlong_filter": "mask_truncated_completions",  # ms-swift: truncated completions take no part in the loss
    "tau_pos": "sapo_temperature_pos",  # SAPO's gate temperatures, ms-swift's names
    "tau_neg": "sapo_temperature_neg",
}
