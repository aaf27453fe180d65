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
import math
from typing import Callable

from ..demo.task import score as _score_exact
from ..errors import UserError
from .base import ORM, completion_text, ms_swift_inputs
from .builtin import Accuracy, Cosine, Format, Repetition, SoftOverlong
from .rm_plugin import rm_plugins


class ExactMatch(ORM):
    """1.0 when the completion, stripped of surrounding whitespace, equals the row's ``answer``, else 0.0.

    The embedded demo's reward. Needs an ``answer`` column in the dataset.
    """

    def __call__(self, completions: list, answer: list | None = None, **kwargs) -> list[float]:
        if answer is None:
            raise UserError("the exact_match reward needs an 'answer' column in the dataset")
        return [_score_exact(completion_text(c), str(a)) for c, a in zip(completions, answer)]


#: Name -> ORM class. ``--reward_funcs NAME`` instantiates ``orms[NAME](**matching flag values)``.
orms: dict[str, type] = {
    "accuracy": Accuracy,
    "cosine": Cosine,
    "exact_match": ExactMatch,
    "format": Format,
    "repetition": Repetition,
    "soft_overlong": SoftOverlong,
}


def _check_rewards(name: str, values, completions: list, prompts: list | None = None) -> list[float | None]:
    """One float (or None) per completion, or a UserError naming the function, the problem and the completion.

    The rule (docs/rewards.md): None means "does not apply" and is skipped (TRL's convention); NaN or
    inf is an error, since TRL would silently read NaN as "does not apply" and inf would poison the
    advantages; a wrong count or a non-number is an error.
    """
    expected = len(completions)
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
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(
                f"reward function '{name}' returned {type(value).__name__} {value!r:.40} for completion {index}; "
                "rewards must be numbers (or None to skip a completion)"
            ) from None
        if not math.isfinite(number):
            raise UserError(
                f"reward function '{name}' returned {number} for {_sample(index, prompts)}; rewards must be finite "
                "numbers (return None where the reward does not apply)"
            )
        checked.append(number)
    return checked


def _sample(index: int, prompts: list | None) -> str:
    """``completion 3 (prompt '12+7=')``: which sample, recognisably, without dumping it."""
    if not prompts or index >= len(prompts):
        return f"completion {index}"
    prompt = prompts[index]
    if not isinstance(prompt, str):  # a conversation: its last message is the question
        prompt = str(prompt[-1].get("content", "")) if prompt and isinstance(prompt[-1], dict) else str(prompt)
    shown = prompt if len(prompt) <= 40 else prompt[:40] + "..."
    return f"completion {index} (prompt {shown!r})"


def _single_calls(completions: list, prompts: list | None, kwargs: dict):
    """(index, (completions, prompts, kwargs)) for a call on each completion alone: per-completion lists cut to one item."""
    count = len(completions)
    for index in range(count):

        def cut(value, index=index):
            return [value[index]] if isinstance(value, list) and len(value) == count else value

        yield index, ([completions[index]], cut(prompts), {key: cut(value) for key, value in kwargs.items()})


def _raises(orm, completions, prompts, kwargs) -> bool:
    try:
        orm(completions, prompts=prompts, **kwargs)
    except Exception:
        return True
    return False


def _raised(name: str, err: Exception, index: int | None, completions: list, prompts: list | None) -> UserError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
    what = f"{type(err).__name__}: {reason}" if reason else type(err).__name__
    where = _sample(index, prompts) if index is not None else f"a batch of {len(completions)} completions ({_sample(0, prompts)} first)"
    return UserError(f"reward function '{name}' raised {what} on {where}; fix the function or the data it reads")


def _is_async(orm) -> bool:
    return inspect.iscoroutinefunction(orm) or inspect.iscoroutinefunction(getattr(orm, "__call__", None))


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
    built = build_orm(name, options)
    orm = _convention(built)

    # A reward that raises is called again one completion at a time, to name the completion it fails
    # on; the run is stopping anyway, and "which sample" is what the user needs to reproduce it.
    if _is_async(built):

        async def reward(prompts=None, completions=None, **kwargs):
            try:
                values = await orm(completions, prompts=prompts, **kwargs)
            except UserError:
                raise
            except Exception as err:
                failing = None
                for index, (one_completion, one_prompt, one_kwargs) in _single_calls(completions, prompts, kwargs):
                    try:
                        await orm(one_completion, prompts=one_prompt, **one_kwargs)
                    except Exception:
                        failing = index
                        break
                raise _raised(name, err, failing, completions, prompts) from None
            return _check_rewards(name, values, completions, prompts)

    else:

        def reward(prompts=None, completions=None, **kwargs):
            try:
                values = orm(completions, prompts=prompts, **kwargs)
            except UserError:
                raise
            except Exception as err:
                failing = next((i for i, args in _single_calls(completions, prompts, kwargs) if _raises(orm, *args)), None)
                raise _raised(name, err, failing, completions, prompts) from None
            return _check_rewards(name, values, completions, prompts)

    reward.__name__ = name  # TRL logs rewards/<name>/mean
    reward.__qualname__ = name
    return reward


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
    "rm_plugins",
]
