"""The demo's verifiable toy task: two-operand addition, scored by exact match (the ``exact_match`` reward,
:class:`swift_cispo.rewards.builtin.ExactMatch`).

Pure Python on purpose: the problems are plain strings that the build script, the tests and the benchmarks share.

A problem is a prompt such as ``"12+7="`` whose answer is ``"19"``. The model is expected to emit the answer's
digits followed by its end-of-sequence token; the trainer strips that special token when decoding, so a correct
completion decodes to exactly ``"19"``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

# Operands are drawn from [LOW, HIGH] inclusive. 0..19 gives 400 distinct problems with one- and two-digit answers
# (0..38): enough variety that a tiny model cannot trivially memorise a handful of strings, small enough that a
# 2-layer model can represent the whole table.
LOW: int = 0
HIGH: int = 19


def format_prompt(a: int, b: int) -> str:
    """Return the prompt text for ``a + b``, e.g. ``format_prompt(12, 7) == "12+7="``."""
    return f"{a}+{b}="


def all_problems(low: int = LOW, high: int = HIGH) -> list[dict[str, str]]:
    """Every ``a+b=`` problem with ``low <= a, b <= high``, in a fixed (row-major) order."""
    return [
        {"prompt": format_prompt(a, b), "answer": str(a + b)}
        for a in range(low, high + 1)
        for b in range(low, high + 1)
    ]


def make_problems(n: int | None = None, seed: int = 0, low: int = LOW, high: int = HIGH) -> Iterator[dict[str, str]]:
    """Yield problems as ``{"prompt": "12+7=", "answer": "19"}`` rows.

    Args:
        n: How many rows to yield. ``None`` yields each of the ``(high - low + 1) ** 2`` distinct problems exactly
            once; a larger ``n`` cycles through fresh shuffles of the full table, so every problem stays equally
            frequent.
        seed: Seed of the private RNG that shuffles the table; the same arguments always yield the same rows.
        low, high: Inclusive operand range.
    """
    rng = random.Random(seed)
    table = all_problems(low, high)
    total = len(table) if n is None else n
    emitted = 0
    while emitted < total:
        order = list(range(len(table)))
        rng.shuffle(order)
        for i in order[: total - emitted]:
            yield dict(table[i])
            emitted += 1
