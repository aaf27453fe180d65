"""Turning the command line (and YAML/JSON config files) into the argument dataclasses.

Only :func:`make_parser` imports transformers; the rest works on the tokens, so that an unknown flag
is refused before any library is loaded.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from ..errors import UserError, first_line
from .args import ALIASES


def make_parser(dataclass_types, prog: str):
    """An HfArgumentParser over the dataclasses whose errors become :class:`UserError` (one sentence, no usage dump)."""
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message):
            raise UserError(message)

    from .ranges import allowed_text

    parser = Parser(dataclass_types, prog=prog, allow_abbrev=False)
    for action in parser._actions:  # each numeric flag's allowed values, from the one table (cli/ranges.py)
        allowed = allowed_text(action.dest)
        if allowed and action.help:
            action.help = f"{action.help} {allowed}"
    return parser


def flag_names(parser) -> list[str]:
    """Every ``--flag`` a parser accepts, sorted."""
    return sorted(opt for action in parser._actions for opt in action.option_strings if opt.startswith("--"))


def _config_to_argv(path_str: str) -> list[str]:
    """A YAML/JSON file of ``flag: value`` pairs, as command-line tokens."""
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise UserError(f"config file {path_str} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:
        raise UserError(f"config file {path_str} could not be parsed: {first_line(err)}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise UserError(f"config file {path_str} must hold a mapping of flag: value pairs, not a {type(data).__name__}")
    argv: list[str] = []
    for key, value in data.items():
        if key == "loss_fn" and isinstance(value, dict):  # NeMo-RL's loss block, taken verbatim
            from .nemo import loss_fn_to_flags

            argv.extend(loss_fn_to_flags(value, f"config file {path_str}"))
            continue
        if key == "columns" and isinstance(value, dict):  # --columns takes its mapping as JSON
            argv.extend(["--columns", json.dumps(value)])
            continue
        if isinstance(value, dict):
            raise UserError(f"config file {path_str}: '{key}' holds a nested block, which is not a known flag")
        if value is None:
            continue
        argv.append(f"--{key}")
        values = value if isinstance(value, list) else [value]
        argv.extend(("true" if v else "false") if isinstance(v, bool) else str(v) for v in values)
    return argv


def expand_config_files(argv: list[str]) -> list[str]:
    """A first argument ending in .yaml/.yml/.json, and ``--config FILE`` anywhere, are read as flags.

    The file's flags come first, so flags given on the command line override them.
    """
    argv = list(argv)
    files: list[str] = []
    if argv and Path(argv[0]).suffix.lower() in (".yaml", ".yml", ".json"):
        files.append(argv.pop(0))
    rest: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--config":
            if index + 1 >= len(argv):
                raise UserError("--config needs a file path")
            files.append(argv[index + 1])
            index += 2
            continue
        if token.startswith("--config="):
            files.append(token.split("=", 1)[1])
        else:
            rest.append(token)
        index += 1
    expanded: list[str] = []
    for file in files:
        expanded.extend(_config_to_argv(file))
    return expanded + rest


def normalise_flags(argv: list[str]) -> list[str]:
    """Apply aliases (``--tuner_type`` -> ``--train_type``) and ``--flag=value`` splitting."""
    out: list[str] = []
    for token in argv:
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            name = ALIASES.get(name.replace("-", "_"), name.replace("-", "_"))
            out.append(f"--{name}")
            if eq:
                out.append(value)
        else:
            out.append(token)
    return out


def reject_repeated_flags(argv: list[str]) -> None:
    """A flag given twice on the command line with different values is an error, not "the last one wins".

    Call it on the command line as typed (aliases and ``--flag=value`` normalised), before config files
    are expanded: a flag that overrides a config file's value is the intended use of the override.
    """
    occurrences: list[tuple[str, list[str]]] = []  # (flag, its values), in command-line order
    for token in normalise_flags(argv):
        if token.startswith("--"):
            occurrences.append((token[2:], []))
        elif occurrences:
            occurrences[-1][1].append(token)
    first: dict[str, list[str]] = {}
    for name, values in occurrences:
        if name in first and first[name] != values:
            shown = [" ".join(v) or "(no value)" for v in (first[name], values)]
            raise UserError(f"--{name} is given twice, as {shown[0]} and as {shown[1]}; give it once")
        first.setdefault(name, values)


def explicit_flags(argv: list[str]) -> set[str]:
    return {token[2:] for token in argv if token.startswith("--")}


def reject_unsupported(argv: list[str], known: list[str]) -> None:
    for index, token in enumerate(argv[:-1]):
        if token == "--train_type" and argv[index + 1] in ("qlora", "adalora", "longlora", "dora"):
            raise UserError(f"--train_type {argv[index + 1]} is not supported; use --train_type full or lora")
    for name in explicit_flags(argv):
        if f"--{name}" in known:
            continue
        close = difflib.get_close_matches(f"--{name}", known, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; run 'swift rlhf --help' for the flags"
        raise UserError(f"unknown flag --{name}{hint}")
