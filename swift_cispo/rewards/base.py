"""The reward base class and the helpers every reward needs."""

from __future__ import annotations


class ORM:
    """Base class of a reward: ``__call__(completions, **kwargs) -> list[float]``, one per completion.

    ``__call__`` may also be ``async def``; async rewards of one batch run concurrently.

    ``inputs_convention`` says how the completions arrive: ``"trl"`` (TRL's way: strings, or lists of
    messages for chat prompts) or ``"ms_swift"`` (ms-swift's way: always the reply's text, with the whole
    conversation, reply included, as the ``messages`` keyword), which ms-swift plugin files expect.
    """

    inputs_convention = "trl"

    def __call__(self, completions: list, **kwargs) -> list[float]:
        raise NotImplementedError


def completion_text(completion) -> str:
    """The text of a completion, whether plain (a string) or conversational (a list of messages)."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content", "") for message in completion if message.get("role") == "assistant")


def ms_swift_inputs(completions: list, prompts: list | None, kwargs: dict) -> tuple[list[str], dict]:
    """A reward's inputs as ms-swift passes them: the completions' texts, and ``messages`` (prompt + reply) per completion."""
    texts = [completion_text(c) for c in completions]
    if "messages" in kwargs or prompts is None:
        return texts, kwargs
    conversations = []
    for prompt, text in zip(prompts, texts):
        turns = [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        conversations.append([*turns, {"role": "assistant", "content": text}])
    return texts, {**kwargs, "messages": conversations}
