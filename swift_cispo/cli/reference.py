"""The ``swift rlhf``, ``swift rollout`` and ``swift export`` flag reference (docs/cli.md), rendered from the argument dataclasses."""

from __future__ import annotations

import dataclasses
import typing

from .args import ALIASES, DataArguments, ModelArguments, RLHFArguments, training_arguments_class

_SECTIONS = (
    ("Model", ModelArguments),
    ("Data", DataArguments),
    ("Algorithm and rewards", RLHFArguments),
    ("Training (fields of swift_cispo.GRPOConfig)", None),
)


def _type_name(tp) -> str:
    text = str(tp) if not isinstance(tp, type) else tp.__name__
    return text.replace("typing.", "").replace("transformers.trainer_utils.", "").replace("NoneType", "None").replace(" | ", " or ")


def _default(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    value = f.default
    return "`None`" if value is None else f"`{getattr(value, 'value', value)}`"


def _table(cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    lines = ["| flag | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        help_text = " ".join(str(f.metadata.get("help", "")).split()).replace("|", "\\|")
        choices = f.metadata.get("choices")
        if choices:
            help_text += f" Choices: {', '.join(map(str, choices))}."
        lines.append(f"| `--{f.name}` | {_type_name(hints[f.name])} | {_default(f)} | {help_text} |")
    return lines + [""]


def render() -> str:
    from .export import ExportArguments
    from .rollout import RolloutArguments

    lines = [
        "# `swift rlhf`, `swift rollout` and `swift export` flags",
        "",
        "Generated from the argument dataclasses by `python scripts/gen_cli_reference.py`; a test checks that",
        "this file is current. Every flag can also be a key of a YAML/JSON config file",
        "(`swift rlhf config.yaml` or `--config config.yaml`); command-line flags override the file.",
        "",
    ]
    for title, cls in _SECTIONS:
        lines += [f"## {title}", "", *_table(cls or training_arguments_class())]
    lines += ["## Aliases", ""]
    lines += [f"- `--{alias}` is `--{name}`" for alias, name in ALIASES.items()]
    lines += [
        "",
        "# `swift rollout` flags",
        "",
        "Serves a model with vLLM for `swift rlhf --use_vllm true --vllm_mode server` (see docs/rollouts.md).",
        "",
        *_table(RolloutArguments),
        "# `swift export` flags",
        "",
        "Merges a LoRA adapter into its base model (see docs/distributed.md).",
        "",
        *_table(ExportArguments),
    ]
    return "\n".join(lines) + "\n"
