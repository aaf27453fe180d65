"""No-Positive-Resampling: solved prompts leave later epochs, and a resumed run replays the same order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from trl.trainer.utils import RepeatSampler

from helpers import grpo_config
from swift_cispo.errors import UserError
from swift_cispo.trainers.resampling import NPR_STATE, NoPositiveResampling, EpochSampler, group_pass_rates, prompt_key

SAMPLER = dict(mini_repeat_count=2, batch_size=3, repeat_count=2, shuffle=True, seed=7)


def _epochs(sampler, count: int) -> list[list[int]]:
    """What transformers does: set_epoch (where the sampler has it), then iterate, once per epoch."""
    orders = []
    for epoch in range(count):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        orders.append(list(sampler))
    return orders


def test_with_nothing_excluded_the_order_is_trls():
    data = list(range(10))
    ours = EpochSampler(data, keys=[str(i) for i in data], history=NoPositiveResampling(), **SAMPLER)
    assert _epochs(ours, 3) == _epochs(RepeatSampler(data, **SAMPLER), 3)
    assert _epochs(EpochSampler(data, **SAMPLER), 3) == _epochs(RepeatSampler(data, **SAMPLER), 3)


def test_a_sampler_resumed_in_a_later_epoch_draws_that_epochs_order():
    data = list(range(10))
    uninterrupted = _epochs(EpochSampler(data, **SAMPLER), 3)
    resumed = EpochSampler(data, **SAMPLER)  # a new process, resuming in epoch 2
    resumed.set_epoch(2)
    assert list(resumed) == uninterrupted[2]
    # TRL's own sampler, new, draws epoch 0's order whatever the epoch (what a resume used to train on)
    assert list(RepeatSampler(data, **SAMPLER)) == uninterrupted[0] != uninterrupted[2]


def test_excluded_prompts_leave_the_next_epoch_which_keeps_its_length():
    data = list(range(10))
    history = NoPositiveResampling()
    sampler = EpochSampler(data, keys=[f"k{i}" for i in data], history=history, **SAMPLER)
    first = list(sampler)  # (no set_epoch: the sampler counts its epochs itself)
    history.record(["k1", "k4", "k5"], torch.tensor([0.9, 1.0, 0.5]), step=3)  # k5 stays: 0.5 < 0.9
    assert history.excluded == {"k1": 3, "k4": 3}
    second = list(sampler)
    assert len(second) == len(first) == len(sampler)
    assert {1, 4} <= set(first) and not {1, 4} & set(second) and 5 in second
    assert history.epochs == {0: [], 1: ["k1", "k4"]}  # each epoch's set, frozen when it began


def test_a_resumed_sampler_replays_each_epoch_from_its_saved_set():
    data = list(range(10))
    history = NoPositiveResampling()
    sampler = EpochSampler(data, keys=[f"k{i}" for i in data], history=history, **SAMPLER)
    list(sampler)
    history.record(["k2"], torch.tensor([1.0]), step=1)
    second = list(sampler)
    history.record(["k3"], torch.tensor([1.0]), step=6)  # during epoch 1, after the checkpoint
    saved = json.loads(json.dumps(history.state_dict()))
    # a new process: the sampler starts from epoch 0 with the saved history
    restored = NoPositiveResampling()
    restored.load_state_dict(saved)
    again = EpochSampler(data, keys=[f"k{i}" for i in data], history=restored, **SAMPLER)
    again.set_epoch(1)  # transformers resumes in epoch 1
    assert list(again) == second  # epoch 1 samples without k2 only, as it did, not without k3


def test_every_prompt_solved_is_one_sentence():
    history = NoPositiveResampling()
    history.record(["a", "b"], torch.tensor([1.0, 1.0]), step=0)
    sampler = EpochSampler([0, 1], keys=["a", "b"], history=history, **{**SAMPLER, "batch_size": 1})
    with pytest.raises(UserError, match="all 2 training prompts reached a pass rate of 0.9"):
        list(sampler)


def test_group_pass_rates():
    rewards = torch.tensor([1.0, 1.0, 0.0, float("nan"), 2.0, 1.0, 1.0, 1.0])
    assert group_pass_rates(rewards, 4, pass_reward=1.0).tolist() == [0.5, 1.0]


def test_prompt_keys_tell_prompts_apart_by_content():
    assert prompt_key("1+2=") == prompt_key("1+2=") != prompt_key("1+3=")
    assert prompt_key([{"role": "user", "content": "hi"}]) != prompt_key("hi")


def test_the_pass_rate_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"npr_pass_rate must be in \(0, 1\]"):
        grpo_config(tmp_path, no_positive_resampling=True, npr_pass_rate=0.0)


PROMPTS = [f"{a}+{b}=" for a in range(2) for b in range(4)]  # 8 prompts; 2 per step: an epoch is 4 steps


def _reward(completions, prompts, **kwargs):
    """Prompts '0+...' always pass; the others never do (reward below 1)."""
    return [1.0 if p.startswith("0+") else 0.25 * (len(c) % 3) for p, c in zip(prompts, completions)]


def _train(tiny_model_dir, out: Path, resume: str | None = None, **options):
    from swift_cispo import GRPOTrainer

    config = grpo_config(
        out.parent, output_dir=str(out), max_steps=10, no_positive_resampling=True, log_completions=True,
        save_strategy="steps", save_steps=6, **options,
    )  # fmt: skip
    trainer = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=_reward, args=config, train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _prompts_by_step(out: Path) -> dict[int, list[str]]:
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    return {step: sorted({r["prompt"] for r in rows if r["step"] == step}) for step in sorted({r["step"] for r in rows})}


@pytest.mark.slow
def test_solved_prompts_leave_later_epochs_and_a_resume_replays_the_order(tiny_model_dir, tmp_path, caplog):
    whole = tmp_path / "whole"
    trainer = _train(tiny_model_dir, whole)
    steps = _prompts_by_step(whole)
    first_epoch = {p for step in range(1, 5) for p in steps[step]}
    later = {p for step in range(5, 11) for p in steps[step]}
    assert first_epoch == set(PROMPTS)  # epoch 0 sees every prompt
    assert later and not any(p.startswith("0+") for p in later)  # solved in epoch 0: gone from epochs 1 and 2
    assert sorted(trainer.npr.excluded) == sorted(prompt_key(p) for p in PROMPTS if p.startswith("0+"))
    assert json.loads((whole / "checkpoint-6" / NPR_STATE).read_text())["epochs"]["1"]

    # resumed from step 6 (inside epoch 1) in a new trainer: the same prompts at every later step, the same weights
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    import shutil

    shutil.copytree(whole / "checkpoint-6", resumed / "checkpoint-6")
    again = _train(tiny_model_dir, resumed, resume=str(resumed / "checkpoint-6"))
    assert {s: p for s, p in _prompts_by_step(resumed).items()} == {s: steps[s] for s in range(7, 11)}
    for (name, a), b in zip(trainer.model.named_parameters(), again.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)

    # negative control: the same resume without the saved history samples the solved prompts again
    forgetful = tmp_path / "forgetful"
    forgetful.mkdir()
    shutil.copytree(whole / "checkpoint-6", forgetful / "checkpoint-6")
    (forgetful / "checkpoint-6" / NPR_STATE).unlink()
    with caplog.at_level("WARNING", logger="swift_cispo"):
        _train(tiny_model_dir, forgetful, resume=str(forgetful / "checkpoint-6"))
    assert "holds no No-Positive-Resampling history" in caplog.text
    assert _prompts_by_step(forgetful) != {s: steps[s] for s in range(7, 11)}


def test_options_of_features_left_off_are_refused(tmp_path):
    with pytest.raises(ValueError, match="npr_pass_rate and npr_pass_reward configure No-Positive-Resampling"):
        grpo_config(tmp_path, npr_pass_rate=0.5)
    with pytest.raises(ValueError, match="interruption_phrase is the text forced interruptions append; give thinking_budget"):
        grpo_config(tmp_path, interruption_phrase="stop.")
