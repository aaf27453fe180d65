"""The token record of one multi-turn trajectory: what the policy sampled, and everything else.

A scheduler speaks in messages; training needs tokens. Re-tokenising the final conversation would train
on token sequences the sampler never saw (a chat template may render an earlier turn differently, and
BPE may split the sampled text differently), so the trainer's log-probs would no longer describe the
sampled tokens. Instead the trajectory keeps the sampled tokens themselves, and each new turn's prompt
is the trajectory so far plus only the text the conversation gained since (an environment's reply, a
tool's output, a scheduler's hint, the template's turn markers). That text is tokenised on its own and
marked as not trained (``trained = 0``): it is in the context, not in the loss or the token count.

When a scheduler rewrites text the trajectory already holds (ms-swift's ``math_tip_trick`` cuts the
reply at ``<answer>`` and continues it with a hint), the trajectory is cut back to the longest token
prefix whose text the new conversation still starts with, and continues from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError


@dataclass
class Trajectory:
    token_ids: list[int]
    prompt_length: int  # the first turn's prompt; never cut (a scheduler that rewrites it is refused)
    trained: list[int] = field(default_factory=list)  # per completion token: 1 sampled by the policy, 0 context
    logprobs: list[float] = field(default_factory=list)  # per completion token: the sampler's, 0.0 for context

    @classmethod
    def start(cls, prompt_ids: list[int]) -> "Trajectory":
        return cls(token_ids=list(prompt_ids), prompt_length=len(prompt_ids))

    @property
    def completion_ids(self) -> list[int]:
        return self.token_ids[self.prompt_length :]

    @property
    def completion_length(self) -> int:
        return len(self.token_ids) - self.prompt_length

    def append(self, ids: list[int], trained: int, logprobs: list[float] | None = None) -> None:
        self.token_ids.extend(ids)
        self.trained.extend([trained] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None and len(logprobs) == len(ids) else [0.0] * len(ids))

    def cut(self, length: int) -> None:
        """Keep the first ``length`` tokens."""
        del self.token_ids[length:]
        keep = max(length - self.prompt_length, 0)
        del self.trained[keep:]
        del self.logprobs[keep:]


def decode(tokenizer, ids: list[int]) -> str:
    """Exact text of ``ids``, special tokens included (what a chat template renders)."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no BOS/EOS added (the template's own markers are in the text)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def longest_prefix_within(tokenizer, ids: list[int], text: str, floor: int = 0) -> int:
    """The largest ``n >= floor`` such that the text of ``ids[:n]`` is a prefix of ``text`` (binary search:
    a prefix of a prefix is a prefix). Returns ``floor - 1`` if not even ``ids[:floor]`` is."""
    if text.startswith(decode(tokenizer, ids)):
        return len(ids)
    if not text.startswith(decode(tokenizer, ids[:floor])):
        return floor - 1
    low, high = floor, len(ids) - 1  # ids[:low] fits, ids[:high + 1] does not
    while low < high:
        middle = (low + high + 1) // 2
        if text.startswith(decode(tokenizer, ids[:middle])):
            low = middle
        else:
            high = middle - 1
    return low


def continue_with(trajectory: Trajectory, tokenizer, rendered: str, scheduler: str = "the scheduler") -> list[int]:
    """Bring ``trajectory`` in line with the conversation rendered as ``rendered``; returns the new prompt's ids.

    Tokens whose text ``rendered`` still starts with are kept (sampled ones stay trained); the rest of the
    text is appended as context (``trained = 0``).
    """
    kept = longest_prefix_within(tokenizer, trajectory.token_ids, rendered, floor=trajectory.prompt_length)
    if kept < trajectory.prompt_length:
        raise UserError(
            f"multi-turn scheduler {scheduler} changed the first turn's prompt during the rollout; a trajectory must "
            "extend its prompt (append messages or continue the assistant's reply), not rewrite it"
        )
    trajectory.cut(kept)
    rest = rendered[len(decode(tokenizer, trajectory.token_ids)) :]
    trajectory.append(encode(tokenizer, rest), trained=0)
    return list(trajectory.token_ids)
