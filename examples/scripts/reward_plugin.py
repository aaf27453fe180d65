"""A reward plugin for `swift rlhf --external_plugins examples/scripts/reward_plugin.py`.

It registers `answer_match`: 1.0 when the completion contains the row's `answer` column as its last
number, else 0.0 (the usual check for short math answers), plus a small bonus for brevity.
"""

import re

from swift_cispo.rewards import ORM, completion_text, orms

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class AnswerMatch(ORM):
    def __call__(self, completions, answer, **kwargs):
        rewards = []
        for completion, reference in zip(completions, answer):
            numbers = _NUMBER.findall(completion_text(completion))
            correct = bool(numbers) and numbers[-1] == str(reference).strip()
            rewards.append(float(correct) + 0.1 / (1 + len(completion_text(completion))))
        return rewards


orms["answer_match"] = AnswerMatch
