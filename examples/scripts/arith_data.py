#!/usr/bin/env python
"""Write a generated arithmetic set for examples/scripts/cispo_smollm2_arith.sh: chat prompts and \\boxed{} solutions.

    python examples/scripts/arith_data.py OUT.jsonl [--rows 2000] [--seed 0]

Each row is ``{"messages": [{"role": "user", "content": ...}], "solution": "\\boxed{N}"}``: the `accuracy` reward
compares the completion's answer with ``solution`` (math-verify), and `format` checks the completion ends with a
\\boxed{} answer. Half are bare sums and differences of two-digit numbers ("What is 47 + 18?"), half one-step word
problems on the same numbers, so the model must read, not only pattern-match.
"""

from __future__ import annotations

import argparse
import json
import random

WORDED = [
    ("{name} has {a} marbles and finds {b} more. How many marbles does {name} have now?", "+"),
    ("A shelf holds {a} books. {b} more books are put on it. How many books are on the shelf?", "+"),
    ("{name} had {a} stickers and gave away {b}. How many stickers are left?", "-"),
    ("A bus carries {a} people. At a stop, {b} people get off. How many people are still on the bus?", "-"),
]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana"]
INSTRUCTION = " Put the final answer in \\boxed{}."


def row(rng: random.Random) -> dict:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        question = f"What is {a} {op} {b}?"
    else:
        template, op = rng.choice(WORDED)
        if op == "-" and b > a:
            a, b = b, a
        question = template.format(a=a, b=b, name=rng.choice(NAMES))
    answer = a + b if op == "+" else a - b
    return {"messages": [{"role": "user", "content": question + INSTRUCTION}], "solution": f"\\boxed{{{answer}}}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with open(args.output, "w", encoding="utf-8") as f:
        for _ in range(args.rows):
            f.write(json.dumps(row(rng)) + "\n")


if __name__ == "__main__":
    main()
