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


def test_trl_rollout_correction_names_map_onto_ours(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="swift_cispo"):
        config = grpo_config(tmp_path, vllm_importance_sampling_mode="sequence_mask", vllm_importance_sampling_clip_max=3.0)
    assert (config.rollout_importance_sampling_mode, config.rollout_importance_sampling_threshold) == ("sequence_mask", 3.0)
    assert "mapped onto rollout_importance_sampling_mode=sequence_mask" in caplog.text
    off = grpo_config(tmp_path, vllm_importance_sampling_correction=False)
    assert off.rollout_importance_sampling_mode == "none" and off.vllm_importance_sampling_correction is False
    # TRL's own flags follow ours, so TRL computes the old log-probs exactly when our correction needs them
    # from a separate pass: an update falls inside a rollout (else the loss reads pi_old off its own forward)
    default = grpo_config(tmp_path)
    assert default.vllm_importance_sampling_correction is False
    assert grpo_config(tmp_path, num_iterations=2).vllm_importance_sampling_correction is True
    assert default.vllm_importance_sampling_clip_max == default.rollout_importance_sampling_threshold == 2.0
    with pytest.raises(ValueError, match="vllm_importance_sampling_clip_min is not supported"):
        grpo_config(tmp_path, vllm_importance_sampling_clip_min=0.5)
    with pytest.raises(ValueError, match="disagree with rollout_importance_sampling_mode='token_mask'"):
        grpo_config(tmp_path, vllm_importance_sampling_mode="sequence_mask", rollout_importance_sampling_mode="token_mask")


def test_loss_options_that_do_not_apply_are_refused(tmp_path):
    with pytest.raises(ValueError, match="delta applies to the PPO-clip losses"):
        grpo_config(tmp_path, delta=4.0)
    with pytest.raises(ValueError, match="cispo_token_mask applies to loss_type=cispo only"):
        grpo_config(tmp_path, loss_type="dapo", cispo_token_mask=True)
    with pytest.raises(ValueError, match="epsilon_high must be a finite number; got inf"):
        grpo_config(tmp_path, epsilon_high=float("inf"))
    assert grpo_config(tmp_path, loss_type="grpo", delta=4.0).delta == 4.0


def test_config_joins_no_process_group_and_defers_deepspeed(tmp_path):
    import torch.distributed as dist

    from swift_cispo.trainers.config import planned_world_size

    config = grpo_config(tmp_path, deepspeed="zero2")
    assert not dist.is_initialized()
    assert config._deepspeed_template["zero_optimization"]["stage"] == 2 and not getattr(config, "_deepspeed_prepared", False)
    # a launcher checks the config its workers will build: 2 processes x 4 rows = 8, divisible by 8 generations
    with pytest.raises(ValueError, match="must be divisible by num_generations"):
        grpo_config(tmp_path, per_device_train_batch_size=4, num_generations=8, steps_per_generation=1)
    with planned_world_size(2):
        config = grpo_config(tmp_path, per_device_train_batch_size=4, num_generations=8, steps_per_generation=1)
    assert config.generation_batch_size == 8


def test_a_dataset_smaller_than_one_generation_batch_is_refused_before_the_model_loads(tmp_path):
    # the model path does not exist: the check must come first
    with pytest.raises(ValueError, match="the dataset has 2 prompts, fewer than the 8 one generation batch takes"):
        GRPOTrainer(model=str(tmp_path / "no-model"), reward_funcs=_length_reward, args=grpo_config(tmp_path, steps_per_generation=4),
                    train_dataset=Dataset.from_dict({"prompt": ["1+2=", "3+4="]}))


def test_resuming_with_another_length_names_the_schedule_that_makes_it_inexact(tmp_path):
    import json

    from swift_cispo.trainers.run_checks import schedule_change_note

    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3, "max_steps": 3}))
    cosine = grpo_config(tmp_path, lr_scheduler_type="cosine", max_steps=6)
    note = schedule_change_note(checkpoint, cosine, 6)
    assert note.startswith("checkpoint-3 was trained for a run of 3 steps and this run has 6: --lr_scheduler_type cosine scale")
    assert schedule_change_note(checkpoint, cosine, 3) is None  # same length: exact
    assert schedule_change_note(checkpoint, grpo_config(tmp_path, lr_scheduler_type="constant", max_steps=6), 6) is None
    ratio = grpo_config(tmp_path, lr_scheduler_type="constant_with_warmup", warmup_steps=0.1, max_steps=6)
    assert "a warmup of 0.1 of the run" in schedule_change_note(checkpoint, ratio, 6)
