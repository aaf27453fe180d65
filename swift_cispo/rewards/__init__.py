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
flag's value; other parameters keep their defaults.

Plain functions with TRL's reward signature can also be passed to the trainer from Python.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

from ..errors import UserError
from .base import ORM, completion_text
from .builtin import Accuracy, Cosine, ExactMatch, Format, Repetition, SoftOverlong
from .wrapper import wrap

#: Name -> ORM class. ``--reward_funcs NAME`` instantiates ``orms[NAME](**matching flag values)``.
orms: dict[str, type] = {
    "accuracy": Accuracy,
    "cosine": Cosine,
    "exact_match": ExactMatch,
    "format": Format,
    "repetition": Repetition,
    "soft_overlong": SoftOverlong,
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
    return entry(**given)


def reward_function(name: str, options: dict | None = None) -> Callable:
    """The ORM registered as ``name``, wrapped as a TRL reward function whose outputs are checked.

    ``options`` (flag name -> value) fill the ORM's constructor parameters of the same names. The
    wrapper is ``async`` when the ORM is, so that TRL runs it concurrently with the other async rewards.
    """
    return wrap(name, build_orm(name, options))


__all__ = [
    "ORM",
    "Accuracy",
    "Cosine",
    "ExactMatch",
    "Format",
    "Repetition",
    "SoftOverlong",
    "build_orm",
    "completion_text",
    "orms",
    "reward_function",
]
