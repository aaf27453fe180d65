"""The trainer and its config, in process: validation, real training steps, off-policy passes."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset

from helpers import grpo_config
from swift_cispo import CISPOTrainer, GRPOTrainer


def _length_reward(completions, **kwargs):
    # a reward with spread in every group, so advantages are non-zero and parameters must move
    return [float(len(c)) + 0.1 * i for i, c in enumerate(completions)]


def _dataset():
    return Dataset.from_dict({"prompt": ["1+2=", "3+4=", "5+5=", "9+1="] * 4})


def test_cispo_is_the_default_and_epsilon_high_defaults_to_five(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="swift_cispo"):
        config = grpo_config(tmp_path)
    assert config.loss_type == "cispo"
    assert config.epsilon_high == 5.0
    assert "capping the importance weight at 5.0" in caplog.text
    assert CISPOTrainer is GRPOTrainer


def test_epsilon_high_validation(tmp_path, caplog):
    with pytest.raises(ValueError, match="epsilon_high must be > 0 for loss_type=cispo"):
        grpo_config(tmp_path, epsilon_high=-1.0)
    with pytest.raises(ValueError, match="epsilon_high must be > 0"):
        grpo_config(tmp_path, epsilon_high=0.0)
    with caplog.at_level(logging.WARNING, logger="swift_cispo"):
        assert grpo_config(tmp_path, epsilon_high=0.5).epsilon_high == 0.5
    assert "scales the whole gradient down" in caplog.text
    # for the PPO family epsilon_high keeps TRL's meaning (an offset), falling back to epsilon
    assert grpo_config(tmp_path, loss_type="dapo").epsilon_high is None


def test_loss_type_is_checked_against_the_registry(tmp_path):
    with pytest.raises(ValueError, match="unknown loss_type 'vespo'; registered loss types: bnpo, cispo, dapo, dr_grpo, grpo, sapo"):
        grpo_config(tmp_path, loss_type="vespo")


def _other_than(off):
    """A value a user could set for an option whose only accepted value is ``off``."""
    if off is None:
        return 0.5
    if isinstance(off, bool):
        return not off
    return off + 0.1


def test_unsupported_trl_options_are_rejected(tmp_path):
    from swift_cispo.trainers.config import _UNSUPPORTED_TRL_OPTIONS

    assert {"off_policy_mask_threshold", "entropy_coef", "use_adaptive_entropy"} <= set(_UNSUPPORTED_TRL_OPTIONS)
    for name, off in _UNSUPPORTED_TRL_OPTIONS.items():
        value = _other_than(off)
        with pytest.raises(ValueError, match=f"{name}={value!r} is not supported"):
            grpo_config(tmp_path, **{name: value})
        assert getattr(grpo_config(tmp_path, **{name: off}), name) == off  # the one accepted value passes


@pytest.mark.parametrize("loss_type", ["cispo", "dapo", "grpo"])
def test_training_steps_change_the_parameters(tiny_model_dir, tmp_path, loss_type):
    trainer = GRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=_length_reward,
        args=grpo_config(tmp_path, loss_type=loss_type),
        train_dataset=_dataset(),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
    assert all(r["grad_norm"] > 0 for r in logs)


def test_second_pass_over_a_generation_batch_is_off_policy_and_capped(tiny_model_dir, tmp_path):
    """num_iterations=2: the second pass reuses the first pass's old log-probs, so its ratios leave 1,
    and with a tiny cap the CISPO weight is visibly clipped."""
    trainer = GRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=_length_reward,
        args=grpo_config(tmp_path, num_iterations=2, max_steps=2, learning_rate=5e-2, epsilon_high=1.0001),
        train_dataset=_dataset(),
    )
    trainer.train()
    logs = [r for r in trainer.state.log_history if "cispo/is_weight_mean" in r]
    first, second = logs[0], logs[1]
    assert "reward" in first and "reward" not in second  # the second step generated nothing
    assert first["cispo/is_weight_mean"] == pytest.approx(1.0, abs=1e-6)  # on-policy: r = 1
    assert first["cispo_clip_ratio"] == 0.0
    assert second["cispo/is_weight_mean"] != pytest.approx(1.0, abs=1e-4)  # ratio departed from 1
    assert second["cispo_clip_ratio"] > 0.0  # and the cap applied


def test_sequence_level_ratios_with_cispo_warn_about_length_weighting(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="swift_cispo"):
        config = grpo_config(tmp_path, importance_sampling_level="sequence")
    assert config.importance_sampling_level == "sequence"
    assert "a sequence counts in proportion to its length" in caplog.text
    with pytest.raises(ValueError, match="importance_sampling_level must be 'token' or 'sequence'"):
        grpo_config(tmp_path, importance_sampling_level="group")


def test_cispo_option_guards(tmp_path):
    with pytest.raises(ValueError, match="add --cispo_clip_convention offset"):
        grpo_config(tmp_path, cispo_epsilon_low=1.0)
    with pytest.raises(ValueError, match="dual_clip_c applies to the PPO-clip losses"):
        grpo_config(tmp_path, dual_clip_c=3.0)
    with pytest.raises(ValueError, match="dual_clip_c must be > 1"):
        grpo_config(tmp_path, loss_type="dapo", dual_clip_c=0.5)
    offset = grpo_config(tmp_path, cispo_clip_convention="offset")
    assert offset.epsilon_high == 4.0  # ceiling 1 + 4 = 5, the same as the cap convention's default
