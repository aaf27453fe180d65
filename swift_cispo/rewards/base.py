"""The reward base class and the helper every reward needs."""

from __future__ import annotations


class ORM:
    """Base class of a reward: ``__call__(completions, **kwargs) -> list[float]``, one per completion.

    ``__call__`` may also be ``async def``; async rewards of one batch run concurrently.
    """

    def __call__(self, completions: list, **kwargs) -> list[float]:
        raise NotImplementedError


def completion_text(completion) -> str:
    """The text of a completion, whether plain (a string) or conversational (a list of messages)."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content", "") for message in completion if message.get("role") == "assistant")
