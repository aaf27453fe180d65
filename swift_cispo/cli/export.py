"""``swift export --adapters DIR --merge_lora true``: fold a trained LoRA adapter into its base model.

The result is a plain transformers checkpoint (safetensors, config, tokenizer) that loads with
``AutoModelForCausalLM.from_pretrained`` and serves with vLLM, with no peft needed at inference.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, first_line
from .args import torch_dtype_field
from .parser import make_parser, normalise_flags

logger = logging.getLogger("swift_cispo")

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class ExportArguments:
    adapters: str | None = field(
        default=None,
        metadata={"help": "Folder of a LoRA adapter saved by `swift rlhf --train_type lora` (the output dir or a checkpoint in it)."},
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "Merge the adapter into the base model's weights and save the merged model (the only export for now)."},
    )
    model: str | None = field(
        default=None,
        metadata={"help": "Base model to merge into. Default: the base_model_name_or_path recorded in the adapter's config."},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where the merged model is written; must be new or empty. Default: '<adapters>-merged'."},
    )
    torch_dtype: str = torch_dtype_field("Dtype of the merged weights")


def parse(argv: list[str]) -> ExportArguments:
    parser = make_parser((ExportArguments,), prog="swift export")
    argv = normalise_flags(argv)
    if "--help" in argv or "-h" in argv:
        parser.print_help()
        raise SystemExit(0)
    (args, remaining) = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        raise UserError(f"unexpected argument {remaining[0]!r}; run 'swift export --help' for the flags")
    from .ranges import check_ranges

    check_ranges(args)
    return args


def base_model_of(adapters: Path, override: str | None) -> str:
    """The base model: --model, else the path or hub id peft recorded when the adapter was saved."""
    if override:
        return override
    config = json.loads((adapters / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapters / ADAPTER_CONFIG} does not name its base model; give it with --model")
    return base


def run(argv: list[str]) -> int:
    args = parse(argv)
    if not args.adapters:
        raise UserError("--adapters is required: the folder of a LoRA adapter (it holds adapter_config.json)")
    if not args.merge_lora:
        raise UserError("swift export merges a LoRA adapter into its base model; add --merge_lora true")
    adapters = Path(args.adapters).expanduser()
    if not (adapters / ADAPTER_CONFIG).is_file():
        raise UserError(f"--adapters {args.adapters} holds no {ADAPTER_CONFIG}; give the folder a --train_type lora run saved")
    base = base_model_of(adapters, args.model)

    from .model import check_model_source, resolve_dtype
    from .outputs import remove_if_empty, resolve_output_dir

    check_model_source(base)
    output_dir = resolve_output_dir(args.output_dir or f"{str(adapters).rstrip('/')}-merged", "export")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(args.torch_dtype)
    logger.info("merging %s into %s", adapters, base)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        merged = PeftModel.from_pretrained(model, str(adapters)).merge_and_unload()
        # the tokenizer saved with the adapter (it may carry the chat template used in training), else the base's
        tokenizer_source = adapters if (adapters / "tokenizer_config.json").is_file() else base
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    except (OSError, ValueError, RuntimeError) as err:
        remove_if_empty(output_dir)
        reason = first_line(err)
        raise UserError(f"could not merge {adapters} into {base}: {reason}") from None
    merged.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    logger.info("merged model written to %s (loads with AutoModelForCausalLM.from_pretrained)", output_dir)
    return 0
