"""How a reward runs inside training: its outputs checked, its failures located on one completion.

:func:`wrap` turns an ORM into a TRL reward function (``async`` when the ORM is, so that TRL runs the
async rewards of a batch concurrently) whose outputs follow the rule of docs/rewards.md, and whose
exceptions become one sentence naming the function and the completion that makes it fail.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

from ..errors import UserError, first_line


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
    reason = first_line(err)
    what = type(err).__name__ if reason == type(err).__name__ else f"{type(err).__name__}: {reason}"
    where = _sample(index, prompts) if index is not None else f"a batch of {len(completions)} completions ({_sample(0, prompts)} first)"
    return UserError(f"reward function '{name}' raised {what} on {where}; fix the function or the data it reads")


def _is_async(orm) -> bool:
    return inspect.iscoroutinefunction(orm) or inspect.iscoroutinefunction(getattr(orm, "__call__", None))


def wrap(name: str, orm) -> Callable:
    """``orm`` as a TRL reward function named ``name`` (logged as rewards/<name>/mean), its outputs checked."""

    # A reward that raises is called again one completion at a time, to name the completion it fails
    # on; the run is stopping anyway, and "which sample" is what the user needs to reproduce it.
    if _is_async(orm):

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
