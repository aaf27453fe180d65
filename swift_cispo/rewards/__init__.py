"""Outcome reward models (ORMs) selectable by name from the command line.

An ORM is a class whose instances are called with the completions (strings) and, as keyword
arguments, every other column of the dataset row (repeated once per completion), plus TRL's
extras (``prompts``, ``completion_ids``, ``trainer_state``, ...). It returns one float per
completion, or ``None`` where it does not apply. ``__call__`` may be ``async def`` (a remote
judge, say): the async rewards of a batch run concurrently. Register one by putting it in
:data:`orms`, typically from a plugin file given with ``--external_plugins``::

    from swift_cispo.rewards import ORM, orms

    class Brevity(ORM):
        def __call__(self, completions, **kwargs):
            return [1.0 / (1 + len(c)) for c in completions]

    orms["brevity"] = Brevity

The command line builds each ORM once. A constructor parameter named like a ``swift rlhf`` reward
flag (``format_pattern``, ``cosine_max_len``, ...) or ``max_completion_length`` receives that
flag's value; other parameters keep their defaults. A parameter named ``args`` receives every flag
as attributes (``args.num_generations``), as ms-swift hands its ORMs their training arguments.

Plain functions with TRL's reward signature can also be passed to the trainer from Python.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

from ..errors import UserError
from .base import ORM, completion_text, ms_swift_inputs
from .builtin import Accuracy, Cosine, ExactMatch, Format, ReactFormat, Repetition, SoftOverlong, ToolBench
from .rm_plugin import rm_plugins
from .wrapper import _is_async, wrap

#: Name -> ORM class. ``--reward_funcs NAME`` instantiates ``orms[NAME](**matching flag values)``.
orms: dict[str, type] = {
    "accuracy": Accuracy,
    "cosine": Cosine,
    "exact_match": ExactMatch,
    "format": Format,
    "react_format": ReactFormat,
    "repetition": Repetition,
    "soft_overlong": SoftOverlong,
    "toolbench": ToolBench,
}


def build_orm(name: str, options: dict | None = None):
    """An instance of the ORM registered as ``name``, its constructor given the ``options`` it names."""
    if name not in orms:
        close = difflib.get_close_matches(name, orms, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown reward function '{name}'; {hint}available: {', '.join(sorted(orms))}")
    entry = orms[name]
    if not isinstance(entry, type):
        return entry
    try:
        parameters = inspect.signature(entry).parameters
    except (TypeError, ValueError):  # a class whose signature cannot be read: built without arguments
        parameters = {}
    given = {key: value for key, value in (options or {}).items() if key in parameters and value is not None}
    try:
        return entry(**given)
    except UserError:
        raise
    except Exception as err:  # a missing argument, or a constructor that checks its environment (an API key, a package)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(
            f"reward function '{name}' could not be built: {type(err).__name__}{': ' + reason if reason else ''}"
        ) from None


def _convention(orm):
    """``orm`` as the wrapper calls it: unchanged, or given ms-swift's inputs when it expects them."""
    if getattr(orm, "inputs_convention", "trl") != "ms_swift":
        return orm
    if _is_async(orm):

        async def call(completions, prompts=None, **kwargs):
            texts, kwargs = ms_swift_inputs(completions, prompts, kwargs)
            return await orm(texts, prompts=prompts, **kwargs)

    else:

        def call(completions, prompts=None, **kwargs):
            texts, kwargs = ms_swift_inputs(completions, prompts, kwargs)
            return orm(texts, prompts=prompts, **kwargs)

    return call


def reward_function(name: str, options: dict | None = None) -> Callable:
    """The ORM registered as ``name``, wrapped as a TRL reward function whose outputs are checked.

    ``options`` (flag name -> value) fill the ORM's constructor parameters of the same names. The
    wrapper is ``async`` when the ORM is, so that TRL runs it concurrently with the other async rewards.
    """
    return wrap(name, _convention(build_orm(name, options)))


__all__ = [
    "ORM",
    "Accuracy",
    "Cosine",
    "ExactMatch",
    "Format",
    "ReactFormat",
    "Repetition",
    "SoftOverlong",
    "ToolBench",
    "build_orm",
    "completion_text",
    "orms",
    "reward_function",
    "rm_plugins",
]
