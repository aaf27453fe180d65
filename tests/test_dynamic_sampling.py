"""Dynamic sampling (DAPO): flat groups found as TRL finds them, replaced row by row, in a real training step."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from helpers import grpo_config
from swift_cispo.trainers.dynamic_sampling import flat_groups, replace_rows, resample_prompts


def test_flat_groups_are_those_with_equal_rewards():
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.0, 1.0], [1.0, 0.0], [float("nan")] * 2, [float("nan")] * 2])
    weights = torch.tensor([1.0, 1.0])  # groups of 2: equal sums, equal sums, 1 vs 1 (weighted sum equal), all unscorable
    assert flat_groups(rewards, weights, 2).tolist() == [True, True, True, True]
    assert flat_groups(rewards, torch.tensor([1.0, 2.0]), 2).tolist() == [True, True, False, True]


def test_resampled_prompts_differ_across_processes_and_repeat_for_small_datasets():
    draws = [resample_prompts(10, 3, rank, 2, torch.Generator().manual_seed(7)) for rank in range(2)]
    assert len(set(draws[0]) | set(draws[1])) == 6
    small = resample_prompts(2, 3, 0, 1, torch.Generator().manual_seed(7))
    assert len(small) == 3 and set(small) <= {0, 1}


def test_replace_rows_aligns_left_padded_prompts_and_right_padded_completions():
    pad = 9
    base = {
        "prompt_ids": torch.tensor([[pad, 1, 2], [3, 4, 5]]), "prompt_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
        "completion_ids": torch.tensor([[6, pad], [7, 8]]), "completion_mask": torch.tensor([[1, 0], [1, 1]]),
        "old_per_token_logps": torch.tensor([[-1.0, 0.0], [-2.0, -3.0]]), "advantages": torch.tensor([0.0, 0.0]),
        "num_items_in_batch": torch.tensor(3),
    }  # fmt: skip
    fresh = {
        "prompt_ids": torch.tensor([[1], [2]]), "prompt_mask": torch.tensor([[1], [1]]),
        "completion_ids": torch.tensor([[5, 6, 7], [8, pad, pad]]), "completion_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
        "old_per_token_logps": torch.tensor([[-0.5, -0.6, -0.7], [-0.8, 0.0, 0.0]]), "advantages": torch.tensor([1.0, -1.0]),
        "num_items_in_batch": torch.tensor(4),
    }  # fmt: skip
    merged = replace_rows(base, fresh, rows=[1], fresh_rows=[0], pad_token_id=pad)
    # the first prompt column is padding in every row now, so it is trimmed
    assert merged["prompt_ids"].tolist() == [[1, 2], [pad, 1]]
    assert merged["prompt_mask"].tolist() == [[1, 1], [0, 1]]
    assert merged["completion_ids"].tolist() == [[6, pad, pad], [5, 6, 7]]
    assert merged["completion_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert torch.equal(merged["old_per_token_logps"], torch.tensor([[-1.0, 0.0, 0.0], [-0.5, -0.6, -0.7]]))
    assert merged["advantages"].tolist() == [0.0, 1.0]
    assert base["advantages"].tolist() == [0.0, 0.0]  # the inputs are not modified
    trimmed = replace_rows(base, fresh, rows=[0, 1], fresh_rows=[1, 1], pad_token_id=pad)
    assert trimmed["prompt_ids"].tolist() == [[2], [2]] and trimmed["completion_ids"].tolist() == [[8], [8]]


def _half_flat_reward(completions, prompts, **kwargs):
    """Prompts starting with '1' give every completion 1.0 (a flat group); the others reward length (informative)."""
    return [1.0 if p.startswith("1") else float(len(c)) + 0.01 * i for i, (p, c) in enumerate(zip(prompts, completions))]


def test_a_training_step_replaces_the_flat_groups(tmp_path, tiny_model_dir):
    from swift_cispo import GRPOTrainer

    dataset = Dataset.from_dict({"prompt": ["1+1=", "1+2=", "3+4=", "5+5=", "9+1=", "7+2=", "1+9=", "8+8="]})
    config = grpo_config(tmp_path, max_steps=1, per_device_train_batch_size=8, num_generations=4, steps_per_generation=2,
                         dynamic_sample=True, max_resample_times=5, temperature=1.5)  # fmt: skip
    trainer = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=_half_flat_reward, args=config, train_dataset=dataset)
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "dynamic_sampling/flat_groups" in h)
    assert logged["dynamic_sampling/flat_groups"] >= 1  # 4 prompts per batch, 3 of 8 flat: some flat group was drawn
    assert logged["dynamic_sampling/replaced_groups"] == logged["dynamic_sampling/flat_groups"]
    assert 1 <= logged["dynamic_sampling/rounds"] <= 5
    window = trainer.rollout_window.slices
    advantages = torch.cat([s["advantages"] for s in window]).view(-1, 4)
    assert (advantages.abs().sum(dim=1) > 0).all()  # no group of the trained window is flat any more


def test_dynamic_sampling_needs_whole_groups_per_process(tmp_path):
    from swift_cispo.trainers.config import planned_world_size

    with planned_world_size(2), pytest.raises(ValueError, match=r"= 2\) must be a multiple of num_generations \(4\)"):
        grpo_config(tmp_path, per_device_train_batch_size=2, num_generations=4, steps_per_generation=1, dynamic_sample=True)
    with pytest.raises(ValueError, match="cannot be combined with async_generate"):
        grpo_config(tmp_path, dynamic_sample=True, async_generate=True, use_vllm=True, vllm_mode="server")
