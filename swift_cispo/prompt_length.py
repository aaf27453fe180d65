"""ms-swift's ``--max_length`` for GRPO: a limit on the prompt's tokens, with its ``truncation_strategy``.

``delete`` drops a row whose rendered prompt is longer than ``max_length`` tokens; ``left`` keeps its
last ``max_length`` tokens (the end of a prompt holds the question and the generation prompt, so the
start is what goes). A left-truncated conversation cannot stay a list of messages, so it becomes the
rendered text of its kept tokens, which TRL then generates from as a plain prompt.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("swift_cispo")

TRUNCATION_STRATEGIES = ("left", "delete")


def prompt_token_ids(tokenizer, prompt, chat_template_kwargs: dict | None = None) -> list[int]:
    """The token ids the policy sees for a prompt (a chat conversation is rendered with its generation prompt)."""
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, **(chat_template_kwargs or {}))
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def keep_last(ids: list[int], max_length: int) -> list[int]:
    """Left truncation: the last ``max_length`` ids."""
    return ids[-max_length:] if len(ids) > max_length else ids


def apply_max_length(dataset, tokenizer, max_length: int | None, strategy: str, chat_template_kwargs: dict | None = None):
    """``(dataset, affected)``: rows over ``max_length`` prompt tokens deleted or left-truncated, and how many."""
    if max_length is None:
        return dataset, 0
    if strategy not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation_strategy must be one of {', '.join(TRUNCATION_STRATEGIES)}; got {strategy!r}")
    lengths = [len(prompt_token_ids(tokenizer, p, chat_template_kwargs)) for p in dataset["prompt"]]
    long_rows = [i for i, n in enumerate(lengths) if n > max_length]
    if not long_rows:
        return dataset, 0
    if strategy == "delete":
        dropped = set(long_rows)
        kept = dataset.select([i for i in range(len(dataset)) if i not in dropped])
        if len(kept) == 0:
            from .errors import UserError

            raise UserError(f"every prompt is longer than --max_length {max_length} tokens, so --truncation_strategy delete leaves no rows")
        return kept, len(long_rows)
    long_set = set(long_rows)
    texts = {i: tokenizer.decode(keep_last(prompt_token_ids(tokenizer, dataset[i]["prompt"], chat_template_kwargs), max_length))
             for i in long_rows}
    # a column holds one type: every prompt becomes text when any must (the short ones rendered unchanged)
    rendered = [texts[i] if i in long_set else _render(tokenizer, p, chat_template_kwargs) for i, p in enumerate(dataset["prompt"])]
    retyped = dataset.map(lambda _, i: {"prompt": rendered[i]}, with_indices=True, remove_columns=["prompt"],
                          desc="left-truncating long prompts")
    return retyped, len(long_rows)


def _render(tokenizer, prompt, chat_template_kwargs: dict | None) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {}))
