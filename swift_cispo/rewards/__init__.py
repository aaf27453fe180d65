"""Outcome reward models (ORMs) selectable by name from the command line.

An ORM is a class whose instances are called with the completions (strings) and, as keyword
arguments, every other column of the dataset row (repeated once per completion), plus TRL's
extras (``prompts``, ``completion_ids``, ``trainer_state``, ...). It returns one float per
completion. Register one by putting it in :data:`orms`, typically from a plugin file given with
``--external_plugins``::

    from swift_cispo.rewards import ORM, orms

    class Brevity(ORM):
        def __call__(self, completions, **kwargs):
            return [1.0 / (1 + len(c)) for c in completions]

    orms["brevity"] = Brevity

Plain functions with TRL's reward signature can also be passed to the trainer from Python.
"""

from __future__ import annotations

from typing import Callable

from ..demo.task import score as _score_exact


class ORM:
    """Base class of a reward: ``__call__(completions, **kwargs) -> list[float]``, one per completion."""

    def __call__(self, completions: list, **kwargs) -> list[float]:
        raise NotImplementedError


def completion_text(completion) -> str:
    """The text of a completion, whether plain (a string) or conversational (a list of messages)."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content", "") for message in completion if message.get("role") == "assistant")


class ExactMatch(ORM):
    """1.0 when the completion, stripped of surrounding whitespace, equals the row's ``answer``, else 0.0.

    The embedded demo's reward. Needs an ``answer`` column in the dataset.
    """

    def __call__(self, completions: list, answer: list | None = None, **kwargs) -> list[float]:
        if answer is None:
            raise ValueError("the exact_match reward needs an 'answer' column in the dataset")
        return [_score_exact(completion_text(c), str(a)) for c, a in zip(completions, answer)]


#: Name -> ORM class. ``--reward_funcs NAME`` instantiates ``orms[NAME]()``.
orms: dict[str, type] = {
    "exact_match": ExactMatch,
}


def _check_rewards(name: str, values, expected: int) -> list[float]:
    """One float (or None, which TRL skips as NaN) per completion, or a UserError naming the problem."""
    from ..errors import UserError

    try:
        values = list(values)
    except TypeError:
        raise UserError(
            f"reward function '{name}' returned {type(values).__name__}; it must return a list with one float per completion"
        ) from None
    if len(values) != expected:
        raise UserError(f"reward function '{name}' returned {len(values)} rewards for {expected} completions; return one per completion")
    checked = []
    for index, value in enumerate(values):
        if value is None:
            checked.append(None)
            continue
        try:
            checked.append(float(value))
        except (TypeError, ValueError):
            raise UserError(
                f"reward function '{name}' returned {type(value).__name__} {value!r:.40} for completion {index}; "
                "rewards must be numbers (or None to skip a completion)"
            ) from None
    return checked


def reward_function(name: str) -> Callable:
    """The ORM registered as ``name``, wrapped as a TRL reward function whose outputs are checked."""
    from ..errors import UserError

    if name not in orms:
        raise UserError(f"unknown reward function '{name}'; available: {', '.join(sorted(orms))}")
    entry = orms[name]
    orm = entry() if isinstance(entry, type) else entry

    def reward(prompts=None, completions=None, **kwargs):
        return _check_rewards(name, orm(completions, prompts=prompts, **kwargs), len(completions))

    reward.__name__ = name  # TRL logs rewards/<name>/mean
    reward.__qualname__ = name
    return reward


__all__ = ["ORM", "ExactMatch", "completion_text", "orms", "reward_function"]
