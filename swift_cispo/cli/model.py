"""The policy model a command loads: its source checked early, weights and tokenizer, and LoRA adapters."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError, first_line


def check_model_source(source: str) -> None:
    """Fail fast on a model path that cannot exist, before any dataset or weights are read."""
    from ..data import looks_like_hub_id

    if not Path(source).expanduser().exists() and (source.startswith((".", "/", "~")) or not looks_like_hub_id(source)):
        raise UserError(f"model path {source} does not exist (give a local model folder or a hub model id)")


def resolve_dtype(name: str):
    """A ``--torch_dtype`` value as transformers' ``dtype`` argument: 'auto', or the torch dtype of that name."""
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_model_and_tokenizer(model_args):
    """``ModelArguments`` -> (causal LM, tokenizer with a pad token); a model that cannot load is a UserError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = model_args.model
    check_model_source(source)
    local = Path(source).expanduser()
    dtype = resolve_dtype(model_args.torch_dtype)
    attention = {"attn_implementation": model_args.attn_impl} if getattr(model_args, "attn_impl", None) else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(local) if local.exists() else source, dtype=dtype, trust_remote_code=model_args.trust_remote_code, **attention
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(local) if local.exists() else source, trust_remote_code=model_args.trust_remote_code
        )
    except (OSError, ValueError) as err:
        reason = first_line(err)
        raise UserError(f"could not load model {source}: {reason}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def check_context_length(model, config) -> None:
    """vLLM refuses a --vllm_max_model_len beyond the model's positions with a traceback from inside its engine."""
    limit = getattr(model.config, "max_position_embeddings", None)
    wanted = config.vllm_max_model_length
    if config.use_vllm and config.vllm_mode == "colocate" and limit and wanted and wanted > limit:
        raise UserError(
            f"--vllm_max_model_len {wanted} is longer than the model's context (max_position_embeddings {limit}); give at most {limit}"
        )


def lora_config(model_args):
    """``--train_type lora`` -> peft's LoraConfig for a causal LM (None for full training)."""
    if model_args.train_type != "lora":
        return None
    if model_args.lora_rank < 1:
        raise UserError(f"--lora_rank must be a whole number >= 1; got {model_args.lora_rank}")
    if model_args.lora_alpha <= 0:
        raise UserError(f"--lora_alpha must be > 0; got {model_args.lora_alpha}")
    if not 0 <= model_args.lora_dropout < 1:
        raise UserError(f"--lora_dropout must be in [0, 1); got {model_args.lora_dropout}")
    from peft import LoraConfig, TaskType

    modules = model_args.target_modules
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=model_args.lora_rank,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules="all-linear" if modules == ["all-linear"] else modules,  # peft's spelling of the shorthand
    )
