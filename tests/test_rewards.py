"""The built-in rewards on real strings, the reward wrapper (async, options, checks) and the trainer's reward hook."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest
import torch
from datasets import Dataset

from helpers import grpo_config
from swift_cispo import GRPOTrainer
from swift_cispo.cli.args import RLHFArguments
from swift_cispo.errors import UserError
from swift_cispo.rewards import ORM, Accuracy, Cosine, Format, Repetition, SoftOverlong, orms, reward_function
from swift_cispo.rewards.builtin import DEFAULT_FORMAT_PATTERN

# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    "completion,reference,expected",
    [
        (r"Adding them gives $\frac{6}{12}$, so the answer is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}", 1.0),
        (r"so the answer is \boxed{0.5}", r"\frac{1}{2}", 1.0),  # equivalent forms
        (r"\boxed{\dfrac12}", "0.5", 1.0),
        ("<think>3/6 reduces</think> <answer>1/2</answer>", r"\frac{1}{2}", 1.0),  # answer tags
        (r"<think>first 7</think><answer>$\frac{2}{4}$</answer>", "0.5", 1.0),
        (r"The answer is \boxed{1+x^2}", "x^2+1", 1.0),  # a bare LaTeX reference is read as math
        (r"I first thought \boxed{3}, but it is \boxed{4}... final: \boxed{3}", "3", 1.0),
        (r"so the answer is \boxed{0.4}", r"\frac{1}{2}", 0.0),
        ("<answer>7</answer> and later 12", "12", 0.0),  # the tagged answer counts, not the last number
        ("I do not know.", "12", 0.0),
        ("The answer is 42", "42", 1.0),
        ("The answer is 41", "The answer is $\\boxed{42}$.", 0.0),  # a full solution as the reference
    ],
)
def test_accuracy_on_real_answers(completion, reference, expected):
    assert Accuracy()([completion], solution=[reference]) == [expected]


def test_accuracy_reference_columns_and_unparseable_reference():
    accuracy = Accuracy()
    assert accuracy([r"\boxed{12}"], answer=["12"]) == [1.0]  # 'answer' when there is no 'solution'
    assert accuracy([r"\boxed{12}"], solution=["12"], answer=["13"]) == [1.0]  # 'solution' wins
    conversation = [{"role": "assistant", "content": r"That is \boxed{12}."}]
    assert accuracy([conversation], answer=["12"]) == [1.0]
    assert accuracy([r"\boxed{12}"], solution=["see the figure"]) == [None]  # not applicable, not wrong
    with pytest.raises(UserError, match="needs a 'solution' or an 'answer' column"):
        accuracy(["1"])


def test_accuracy_off_the_main_thread():
    # math-verify's timeout is signal-based, which only the main thread can set; elsewhere it would
    # silently score every answer 0. Async rewards run on TRL's event-loop thread.
    results = []
    thread = threading.Thread(target=lambda: results.append(Accuracy()([r"\boxed{\frac{1}{2}}", r"\boxed{3}"], solution=["0.5"] * 2)))
    thread.start()
    thread.join()
    assert results == [[1.0, 0.0]]


# --------------------------------------------------------------------------- format


def test_format_default_template():
    reward = Format()
    good = "<think>\n7 + 5 is 12\n</think>\n<answer>12</answer>"
    assert reward([good, f"  {good}\n", "<answer>12</answer>", "<think>hm</think> 12", f"{good} extra"]) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_format_custom_template_and_bad_pattern():
    reward = Format(format_pattern=r"<reasoning>.*</reasoning>\s*Final: \d+")
    assert reward(["<reasoning>a\nb</reasoning> Final: 3", "<reasoning>a</reasoning> Final: x"]) == [1.0, 0.0]
    with pytest.raises(UserError, match="--format_pattern .* is not a valid regular expression"):
        Format(format_pattern="<think>(")


# --------------------------------------------------------------------------- cosine


def test_cosine_follows_the_half_cosine_between_its_end_values():
    reward = Cosine(cosine_max_len=100)
    right, wrong = r"\boxed{12}", r"\boxed{13}"
    completions = [right, right, right, right, wrong, wrong, wrong]
    ids = [[0] * n for n in (0, 50, 100, 250, 0, 50, 100)]
    values = reward(completions, completion_ids=ids, answer=["12"] * 7)
    # correct: 1.0 at length 0, 0.5 at the max length (and beyond); wrong: -0.5 -> 0.0
    assert values == pytest.approx([1.0, 0.75, 0.5, 0.5, -0.5, -0.25, 0.0])
    quarter = reward([right], completion_ids=[[0] * 25], answer=["12"])[0]
    assert quarter == pytest.approx(0.5 + 0.25 * (1 + math.cos(math.pi / 4)))
    assert reward([right], completion_ids=[[0]], solution=["see the figure"]) == [None]


def test_cosine_needs_lengths():
    with pytest.raises(UserError, match="positive cosine_max_len"):
        Cosine()
    with pytest.raises(UserError, match="needs completion_ids"):
        Cosine(cosine_max_len=10)([r"\boxed{1}"], answer=["1"])


# --------------------------------------------------------------------------- repetition


def test_repetition_penalty_on_real_text():
    reward = Repetition()  # 3-grams, max penalty -1
    fresh = "First add the tens, then add the units and carry."
    loop = "I will check again. " * 5
    values = reward([fresh, loop, "too short", ""])
    assert values[0] == 0.0 and values[2] == 0.0 and values[3] == 0.0
    words = loop.lower().split()  # 20 words: 18 trigrams, 4 distinct
    assert len(words) == 20 and values[1] == pytest.approx(-(1 - 4 / 18))
    assert Repetition(repetition_n_grams=1, repetition_max_penalty=-0.5)(["a a b b"]) == [pytest.approx(-0.25)]
    with pytest.raises(UserError, match="--repetition_max_penalty must be <= 0"):
        Repetition(repetition_max_penalty=1.0)
    with pytest.raises(UserError, match="--repetition_n_grams must be at least 1"):
        Repetition(repetition_n_grams=0)


# --------------------------------------------------------------------------- soft_overlong


def test_soft_overlong_is_dapo_eq_13():
    reward = SoftOverlong(soft_max_length=20, soft_cache_length=4)  # penalty from 16 to 20 tokens
    ids = [[0] * n for n in (5, 16, 17, 18, 20, 25)]
    assert reward(["x"] * 6, completion_ids=ids) == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    with pytest.raises(UserError, match="needs --soft_cache_length"):
        SoftOverlong(soft_max_length=20)
    with pytest.raises(UserError, match=r"--soft_cache_length must be in \(0, soft_max_length = 20\]"):
        SoftOverlong(soft_max_length=20, soft_cache_length=30)


# --------------------------------------------------------------------------- the wrapper


def test_flag_defaults_are_the_constructor_defaults_and_reach_the_constructor():
    args = RLHFArguments()
    assert args.format_pattern == DEFAULT_FORMAT_PATTERN
    assert (args.cosine_min_len_value_wrong, args.cosine_max_len_value_correct) == (-0.5, 0.5)
    assert (args.repetition_n_grams, args.repetition_max_penalty) == (3, -1.0)
    reward = reward_function("repetition", {"repetition_n_grams": 1, "unrelated_flag": 1})
    assert reward(prompts=["p"], completions=["a a"]) == [-0.5]
    reward = reward_function("format", {"format_pattern": r"\d+"})
    assert reward(prompts=["p", "p"], completions=["12", "twelve"]) == [1.0, 0.0]


def test_unknown_reward_suggests_a_name():
    with pytest.raises(UserError, match="unknown reward function 'acuracy'; did you mean 'accuracy'\\? available: accuracy, cosine"):
        reward_function("acuracy")


def test_async_orm_is_wrapped_as_async():
    class Slow(ORM):
        async def __call__(self, completions, **kwargs):
            await asyncio.sleep(0)
            return [1] * len(completions)

    orms["slow_test"] = Slow
    try:
        reward = reward_function("slow_test")
        assert asyncio.iscoroutinefunction(reward) and reward.__name__ == "slow_test"
        assert asyncio.run(reward(prompts=["p"], completions=["c"])) == [1.0]
    finally:
        del orms["slow_test"]


# --------------------------------------------------------------------------- in the trainer


def _config(tmp_path, **overrides):
    return grpo_config(tmp_path, **{"learning_rate": 1e-3, "max_steps": 1, **overrides})


def _dataset():
    # two prompts, the two of every batch (8 completions, 4 per prompt)
    return Dataset.from_dict({"prompt": ["1+2=", "3+4="], "answer": ["3", "7"], "level": [1, 2]})


def test_async_rewards_run_concurrently_and_see_columns_and_state(tmp_path, tiny_model_dir):
    # Each waits for an event only the other sets: run one after the other, the first would wait
    # forever (wait_for turns that into a failure), so finishing proves they ran concurrently.
    events: dict[str, asyncio.Event] = {}
    seen = {}

    def handshake(mine: str, theirs: str, value: float):
        class Handshake(ORM):
            async def __call__(self, completions, level, trainer_state, **kwargs):
                events.setdefault(mine, asyncio.Event()).set()
                await asyncio.wait_for(events.setdefault(theirs, asyncio.Event()).wait(), timeout=120)
                seen[mine] = (list(level), trainer_state.global_step)
                return [value] * len(completions)

        return Handshake

    orms["ping_test"], orms["pong_test"] = handshake("ping", "pong", 1.0), handshake("pong", "ping", 0.25)
    try:
        trainer = GRPOTrainer(
            model=str(tiny_model_dir),
            reward_funcs=[reward_function("ping_test"), reward_function("pong_test"), reward_function("exact_match")],
            args=_config(tmp_path, reward_weights=[1.0, 2.0, 1.0]),
            train_dataset=_dataset(),
        )
        trainer.train()
    finally:
        del orms["ping_test"], orms["pong_test"]
    assert seen["ping"] == seen["pong"]
    levels, step = seen["ping"]
    assert sorted(levels) == [1, 1, 1, 1, 2, 2, 2, 2] and step == 0  # the dataset column, the trainer state
    log = next(r for r in trainer.state.log_history if "reward" in r)
    assert log["rewards/ping_test/mean"] == 1.0 and log["rewards/pong_test/mean"] == 0.25
    assert "rewards/exact_match/mean" in log
    assert log["reward"] == pytest.approx(1.0 + 2.0 * 0.25 + log["rewards/exact_match/mean"])  # --reward_weights


class JudgedTrainer(GRPOTrainer):
    """Scores the 'judge' column itself, as a reward model or a remote service would, for the whole batch."""

    judged_batches: list

    def compute_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super().compute_rewards(inputs, prompts, completions, completion_ids_list)
        judge = self.reward_func_names.index("judge")
        rewards[:, judge] = torch.tensor([float(row["level"]) * 10 for row in inputs])
        self.judged_batches.append(len(completions))
        return rewards


def judge(completions, **kwargs):
    """Placeholder named in reward_funcs: its column is filled by JudgedTrainer.compute_rewards."""
    return [None] * len(completions)


def test_reward_hook_in_a_subclass(tmp_path, tiny_model_dir):
    JudgedTrainer.judged_batches = []
    trainer = JudgedTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[reward_function("exact_match"), judge],
        args=_config(tmp_path),
        train_dataset=_dataset(),
    )
    trainer.train()
    assert JudgedTrainer.judged_batches == [8]
    log = next(r for r in trainer.state.log_history if "reward" in r)
    assert log["rewards/judge/mean"] == pytest.approx(15.0)  # levels 1 and 2, four completions each
    assert log["reward_std"] > 4.0  # the judge's scores reached the advantages


def test_reward_hook_with_a_wrong_shape_is_a_user_error(tmp_path, tiny_model_dir):
    class Broken(GRPOTrainer):
        def compute_rewards(self, inputs, prompts, completions, completion_ids_list):
            return torch.zeros(len(completions))

    trainer = Broken(model=str(tiny_model_dir), reward_funcs=judge, args=_config(tmp_path), train_dataset=_dataset())
    with pytest.raises(UserError, match=r"Broken.compute_rewards returned \(8,\); it must return a tensor of shape \(8, 1\)"):
        trainer.train()
