"""The built-in rewards: exact match, math accuracy, output format, length-aware accuracy, repetition and overlong
penalties, and ms-swift's two agent rewards (the ToolBench-style tool call match and the ReAct format).

Each is an :class:`~swift_cispo.rewards.ORM` whose constructor parameters are named like the
``swift rlhf`` flags that set them (``--cosine_max_len`` -> ``Cosine(cosine_max_len=...)``); the
flags' defaults are read from these signatures, so each default is written once, here.
"""

from __future__ import annotations

import json
import math
import re
import threading

from ..errors import UserError
from .base import ORM, completion_text

#: Seconds math-verify may spend parsing or comparing one answer (its signal-based timeout).
MATH_VERIFY_TIMEOUT_SECONDS = 5

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORDS = re.compile(r"[A-Za-z]{2,}")


def _math_verify_timeout() -> int | None:
    # math-verify's timeout is SIGALRM, which only the main thread may set: elsewhere (an async
    # reward's event-loop thread, a thread pool) it would raise, and math-verify would report every
    # answer as unparseable, i.e. a silent reward of 0. There it runs without a timeout.
    return MATH_VERIFY_TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _parse(text: str) -> list:
    from math_verify import parse

    return parse(text, parsing_timeout=_math_verify_timeout())


def final_answer(text: str) -> str:
    """The part of a completion that holds its answer: the last ``<answer>...</answer>``, else all of it.

    Within that part math-verify prefers a ``\\boxed{}`` answer, then the last ``$...$`` expression or number.
    """
    tagged = _ANSWER_TAG.findall(text)
    return tagged[-1] if tagged else text


def math_accuracy(completion: str, reference: str) -> float | None:
    """1.0 when the completion's final answer equals ``reference`` mathematically, 0.0 when it does not,
    None when ``reference`` itself cannot be parsed (the reward does not apply to that row)."""
    from math_verify import verify

    reference = str(reference)
    gold = _parse(reference)
    if not gold and not _WORDS.search(_LATEX_COMMAND.sub("", reference)):
        gold = _parse(f"${reference}$")  # a bare "x^2+1" is read as LaTeX only inside $...$; prose is not math
    if not gold:
        return None
    predicted = _parse(final_answer(completion))
    if not predicted:
        return 0.0
    return float(verify(gold, predicted, timeout_seconds=_math_verify_timeout()))


def score(completion: str, answer: str) -> float:
    """Exact match: 1.0 if ``completion`` equals ``answer`` once surrounding whitespace is stripped, else 0.0."""
    return 1.0 if completion.strip() == answer.strip() else 0.0


class ExactMatch(ORM):
    """1.0 when the completion, stripped of surrounding whitespace, equals the row's ``answer``, else 0.0.

    The embedded demo's reward. Needs an ``answer`` column in the dataset.
    """

    def __call__(self, completions: list, answer: list | None = None, **kwargs) -> list[float]:
        if answer is None:
            raise UserError("the exact_match reward needs an 'answer' column in the dataset")
        return [score(completion_text(c), str(a)) for c, a in zip(completions, answer)]


def _references(name: str, solution, answer) -> list:
    references = solution if solution is not None else answer
    if references is None:
        raise UserError(f"the {name} reward needs a 'solution' or an 'answer' column in the dataset (the reference answer)")
    return references


def _lengths(name: str, completion_ids) -> list[int]:
    if completion_ids is None:
        raise UserError(f"the {name} reward needs completion_ids (the trainer passes them; pass them when calling it yourself)")
    return [len(ids) for ids in completion_ids]


class Accuracy(ORM):
    """Math accuracy checked with math-verify: ``1.0`` if the completion's answer equals the reference.

    The reference is the row's ``solution`` column (a full solution with a ``\\boxed{}`` answer works),
    else its ``answer`` column. The completion's answer is taken from its last ``<answer>...</answer>``
    if it has one, else from the whole text, preferring ``\\boxed{}``. Equivalent forms count as equal
    (``\\frac{1}{2}``, ``1/2``, ``0.5``; ``x^2+1`` and ``1+x^2``). A reference math-verify cannot parse
    gives ``None`` (not applicable) rather than a wrong 0.
    """

    def __call__(self, completions: list, solution: list | None = None, answer: list | None = None, **kwargs) -> list:
        references = _references("accuracy", solution, answer)
        return [math_accuracy(completion_text(c), r) for c, r in zip(completions, references)]


#: Default of ``--format_pattern``: reasoning in ``<think>`` tags, then the answer in ``<answer>`` tags.
DEFAULT_FORMAT_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"


class Format(ORM):
    """``1.0`` when the whole completion (surrounding whitespace aside) matches ``format_pattern``, else ``0.0``.

    The pattern is a Python regular expression in which ``.`` also matches newlines.
    """

    def __init__(self, format_pattern: str = DEFAULT_FORMAT_PATTERN):
        try:
            self.pattern = re.compile(format_pattern, re.DOTALL)
        except re.error as err:
            raise UserError(f"--format_pattern {format_pattern!r} is not a valid regular expression ({err})") from None

    def __call__(self, completions: list, **kwargs) -> list[float]:
        return [float(self.pattern.fullmatch(completion_text(c).strip()) is not None) for c in completions]


class Cosine(ORM):
    """Length-aware accuracy (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning").

    The reward moves along a half cosine from its value at length 0 to its value at
    ``cosine_max_len`` tokens (and stays there beyond): with the defaults, a correct answer earns
    1.0 when short down to 0.5 when long, a wrong one -0.5 when short up to 0.0 when long, so the
    model is pushed to be brief when right and to keep thinking when wrong. Correctness is
    :class:`Accuracy`'s; a row whose reference cannot be parsed gets ``None``.
    """

    def __init__(
        self,
        cosine_min_len_value_wrong: float = -0.5,
        cosine_max_len_value_wrong: float = 0.0,
        cosine_min_len_value_correct: float = 1.0,
        cosine_max_len_value_correct: float = 0.5,
        cosine_max_len: int | None = None,
    ):
        if cosine_max_len is None or cosine_max_len <= 0:
            raise UserError(
                f"the cosine reward needs a positive cosine_max_len (the length in tokens where it reaches its end values), "
                f"got {cosine_max_len}"
            )
        self.wrong = (cosine_min_len_value_wrong, cosine_max_len_value_wrong)
        self.correct = (cosine_min_len_value_correct, cosine_max_len_value_correct)
        self.max_len = cosine_max_len
        self.accuracy = Accuracy()

    def __call__(self, completions: list, completion_ids: list | None = None, **kwargs) -> list:
        lengths = _lengths("cosine", completion_ids)
        correct = self.accuracy(completions, **kwargs)
        rewards = []
        for length, is_correct in zip(lengths, correct):
            if is_correct is None:
                rewards.append(None)
                continue
            at_min_len, at_max_len = self.correct if is_correct else self.wrong
            progress = min(length / self.max_len, 1.0)
            rewards.append(at_max_len + 0.5 * (at_min_len - at_max_len) * (1.0 + math.cos(math.pi * progress)))
        return rewards


class Repetition(ORM):
    """Penalty for repeated word n-grams: ``repetition_max_penalty * (1 - distinct n-grams / n-grams)``.

    0 for a completion with no repeated n-gram (or fewer than ``repetition_n_grams`` words); words are
    split on whitespace and lower-cased.
    """

    def __init__(self, repetition_n_grams: int = 3, repetition_max_penalty: float = -1.0):
        if repetition_n_grams < 1:
            raise UserError(f"--repetition_n_grams must be at least 1, got {repetition_n_grams}")
        if repetition_max_penalty > 0:
            raise UserError(f"--repetition_max_penalty must be <= 0 (it is a penalty), got {repetition_max_penalty}")
        self.n = repetition_n_grams
        self.max_penalty = repetition_max_penalty

    def __call__(self, completions: list, **kwargs) -> list[float]:
        rewards = []
        for completion in completions:
            words = completion_text(completion).lower().split()
            ngrams = list(zip(*(words[i:] for i in range(self.n))))
            if not ngrams:
                rewards.append(0.0)
                continue
            repeated_fraction = 1.0 - len(set(ngrams)) / len(ngrams)
            rewards.append(repeated_fraction * self.max_penalty + 0.0)  # + 0.0 turns -0.0 into 0.0
        return rewards


class SoftOverlong(ORM):
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13), on the completion's length in tokens.

    With ``L_max = soft_max_length`` and ``L_cache = soft_cache_length``: 0 up to ``L_max - L_cache``
    tokens, then falling linearly to -1 at ``L_max``, and -1 beyond.
    """

    def __init__(self, soft_max_length: int | None = None, soft_cache_length: int | None = None):
        if soft_cache_length is None:
            raise UserError(
                "the soft_overlong reward needs --soft_cache_length: the last tokens before --soft_max_length over which "
                "the penalty grows from 0 to -1 (DAPO used 4096 of 20480)"
            )
        if soft_max_length is None or soft_max_length <= 0:
            raise UserError(f"the soft_overlong reward needs a positive soft_max_length, got {soft_max_length}")
        if not 0 < soft_cache_length <= soft_max_length:
            raise UserError(
                f"--soft_cache_length must be in (0, soft_max_length = {soft_max_length}], got {soft_cache_length}"
            )
        self.max_length = soft_max_length
        self.cache_length = soft_cache_length

    def __call__(self, completions: list, completion_ids: list | None = None, **kwargs) -> list[float]:
        expected = self.max_length - self.cache_length
        return [
            min(0.0, max(-1.0, (expected - length) / self.cache_length))
            for length in _lengths("soft_overlong", completion_ids)
        ]


# ms-swift's agent rewards (swift/rewards/orm.py there: ReactORM registered as 'toolbench', ReActFormat as
# 'react_format'), for replies in the ReAct format of --agent_template react_en / react_grpo / toolbench.

#: react_format's layout: the reply starts with <think>...</think>, then (after whitespace) 'Action:', and has an
#: 'Action Input:' after that; anything may follow. (ms-swift writes it as
#: ^<think>.*?</think>\s*Action:.*?Action Input:.*?$ with MULTILINE; the trailing .*?$ always matches.)
REACT_FORMAT = re.compile(r"<think>.*?</think>\s*Action:.*?Action Input:", re.DOTALL)


class ReactFormat(ORM):
    """``1.0`` when the reply is ``<think>...</think>`` then ``Action: ...`` and ``Action Input: ...``, else ``0.0``.

    As in ms-swift, the reply must start with ``<think>`` (no leading whitespace) and may go on after the
    action input (an ``Observation:`` stop word, a second call).
    """

    def __call__(self, completions: list, **kwargs) -> list[float]:
        return [float(REACT_FORMAT.match(completion_text(c)) is not None) for c in completions]


def react_action(text: str) -> tuple[str, str]:
    """The tool name after the last ``Action:`` (up to an ``Action Input:``) and the text after the last
    ``Action Input:``, stripped; ``'none'`` and ``'{}'`` where the marker is missing (ms-swift's reading)."""
    arguments = text[text.rindex("Action Input:") + len("Action Input:"):].strip() if "Action Input:" in text else "{}"
    if "Action:" not in text:
        return "none", arguments
    name = text[text.rindex("Action:") + len("Action:"):].strip()
    return name.split("Action Input:", 1)[0].strip(), arguments


def _json_value(text: str) -> tuple[object, bool]:
    """(the JSON value, True), or (the text, False) when it is not JSON."""
    try:
        return json.loads(text), True
    except ValueError:
        return text, False


def toolbench_score(completion: str, reference: str) -> float:
    """1.0 when the completion's last call names the reference's tool and its ``Action Input`` is a JSON object
    equal to the reference's, else 0.0.

    ms-swift's ReactORM scores F1 over argument keys (a key with another value counts half) and rewards only
    F1 == 1, i.e. equal objects. Non-JSON inputs on both sides it compares by ROUGE-L F (0..1) against
    thresholds of 10 and 20, which no score reaches: 0 here too.
    """
    if completion.endswith("Observation:"):  # the --stop_words Observation: that ended the reply
        completion = completion[: completion.index("Observation:")].strip()
    completion = completion.replace("<|endoftext|>", "").replace("<|im_end|>", "").strip()
    name, arguments = react_action(completion)
    reference_name, reference_arguments = react_action(reference)
    if name != reference_name:
        return 0.0
    predicted, predicted_is_json = _json_value(arguments)
    expected, expected_is_json = _json_value(reference_arguments)
    if not (predicted_is_json and expected_is_json and isinstance(predicted, dict) and isinstance(expected, dict)):
        return 0.0
    return 1.0 if predicted == expected else 0.0


class ToolBench(ORM):
    """ms-swift's 'toolbench' reward: 1.0 when the reply's ReAct call (``Action: NAME`` / ``Action Input: {JSON}``)
    matches the row's ``solution`` (written the same way: xLAM's GRPO rows hold ``Action: NAME\nAction Input:
    {JSON}``), else 0.0; see :func:`toolbench_score`."""

    def __call__(self, completions: list, solution: list | None = None, **kwargs) -> list[float]:
        if solution is None:
            raise UserError(
                "the toolbench reward needs a 'solution' column in the dataset (the expected call, written "
                "'Action: NAME\\nAction Input: {JSON arguments}')"
            )
        return [toolbench_score(completion_text(c), str(s)) for c, s in zip(completions, solution)]
