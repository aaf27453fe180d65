"""The policy model a command loads: its source checked early, weights and tokenizer, and LoRA adapters."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError, first_line


def check_model_source(source: str, trust_remote_code: bool = False, causal_lm: bool = True) -> None:
    """Fail fast on a model path that cannot exist or a folder that cannot be a model, before any weights are read
    (``causal_lm=False``: any architecture, e.g. a reward model's classifier)."""
    from ..data import looks_like_hub_id

    path = Path(source).expanduser()
    if not path.exists() and (source.startswith((".", "/", "~")) or not looks_like_hub_id(source)):
        raise UserError(f"model path {source} does not exist (give a local model folder or a hub model id)")
    if path.exists():
        problem = model_folder_problem(path, trust_remote_code, causal_lm)
        if problem:
            raise UserError(f"model folder {source} {problem}")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


def model_folder_problem(folder: Path, trust_remote_code: bool = False, causal_lm: bool = True) -> str | None:
    """What keeps ``folder`` from loading as a causal LM with its tokenizer (the end of a sentence), or None.

    Read from the files alone (config.json, weight headers, file names): nothing is unpickled or run.
    """
    import json

    from ..checkpoints import safetensors_problem

    if not folder.is_dir():
        return "is a file, not a folder (give the folder that save_pretrained wrote)"
    config_file = folder / "config.json"
    if not config_file.is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        if (folder / "adapter_config.json").is_file():
            return f"holds a LoRA adapter, not a model; merge it first: swift export --adapters {folder} --merge_lora true"
        if ggufs:
            return f"holds a GGUF file ({ggufs[0]}) but no config.json; convert it to a safetensors folder first (docs/quickstart.md)"
        return "has no config.json (give the folder that save_pretrained wrote: config.json, weights, tokenizer)"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"has a config.json that is not valid JSON ({str(err).splitlines()[0]})"
    if not isinstance(config, dict):
        return "has a config.json that is not a JSON object"
    problem = _architecture_problem(config, trust_remote_code) if causal_lm else None
    if problem:
        return problem
    problem = _weights_problem(folder, safetensors_problem)
    if problem:
        return problem
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return (
            "has no tokenizer (none of " + ", ".join(_TOKENIZER_FILES[:3]) + ", ...); save the tokenizer into it "
            "(tokenizer.save_pretrained) or copy the tokenizer files of the model it came from"
        )
    return None


def _architecture_problem(config: dict, trust_remote_code: bool) -> str | None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    remote = "AutoModelForCausalLM" in (config.get("auto_map") or {})
    if remote and not trust_remote_code:
        return "ships its own model code (auto_map in config.json); add --trust_remote_code true if you trust that code"
    if remote:
        return None
    if model_type not in CONFIG_MAPPING_NAMES:
        return f"has model_type {model_type!r}, which this transformers does not know; upgrade transformers, or check config.json"
    architectures = config.get("architectures") or []
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"is a {model_type} model, which has no causal-LM head in transformers (policies generate text)"
    if architectures and not any(name == causal or name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return f"holds a {architectures[0]}, not a causal language model ({causal}); give a policy checkpoint"
    return None


def _weights_problem(folder: Path, safetensors_problem) -> str | None:
    import json

    index = next((folder / name for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json") if (folder / name).is_file()), None)
    if index is not None:
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            return f"has an unreadable {index.name}"
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            return f"lacks {missing[0]}, a weight shard its {index.name} lists ({len(missing)} of {len(shards)} missing)"
        files = [folder / name for name in shards]
    else:
        files = [folder / name for name in ("model.safetensors", "pytorch_model.bin") if (folder / name).is_file()]
        if not files:
            return "has no weights (model.safetensors or pytorch_model.bin); was the save interrupted?"
    for path in files:
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
            if problem:
                return f"has unreadable weights: {problem}"
    return None


def resolve_dtype(name: str):
    """A ``--torch_dtype`` value as transformers' ``dtype`` argument: 'auto', or the torch dtype of that name."""
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_model_and_tokenizer(model_args):
    """``ModelArguments`` -> (causal LM, tokenizer with a pad token); a model that cannot load is a UserError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = model_args.model
    check_model_source(source, model_args.trust_remote_code)
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
    from peft import LoraConfig, TaskType

    modules = model_args.target_modules
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=model_args.lora_rank,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules="all-linear" if modules == ["all-linear"] else modules,  # peft's spelling of the shorthand
    )
