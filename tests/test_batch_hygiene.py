"""ScaleRL's batch hygiene: prompt-level loss aggregation and zero-variance filtering.

The reduction is checked at the gradient against a formula written out independently (loops over
prompts), across a split into micro-batches and ranks; the split-invariance harness
(tests/test_split_invariance.py) runs it through the real pipeline. Zero-variance filtering is
checked through one real training step: flat groups carry zero advantage, so filtering them may
only change the normaliser, by exactly all tokens / informative tokens.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from helpers import grpo_config
from swift_cispo.losses.reduction import ReductionContext, group_token_weights, prompt_mean


def test_group_token_weights_are_one_over_the_groups_tokens():
    tokens = torch.tensor([3.0, 1.0, 0.0, 0.0, 2.0, 2.0])
    weights = group_token_weights(tokens, num_generations=2)
    assert weights.tolist() == [0.25, 0.25, 0.0, 0.0, 0.25, 0.25]


def _reference_prompt_mean(loss: torch.Tensor, mask: torch.Tensor, num_generations: int) -> torch.Tensor:
    """(1 / P) sum_p (1 / T_p) sum over the tokens of p's completions, written as loops."""
    prompts = []
    for start in range(0, loss.size(0), num_generations):
        tokens = [(loss[row, t], mask[row, t]) for row in range(start, start + num_generations) for t in range(loss.size(1))]
        count = sum(float(m) for _, m in tokens)
        if count:
            prompts.append(sum(value * m for value, m in tokens) / count)
    return sum(prompts) / len(prompts)


@pytest.mark.parametrize(("ranks", "micro_batches"), [(1, 1), (1, 3), (2, 1), (2, 3)])
def test_prompt_mean_gradient_matches_the_formula_under_any_split(ranks, micro_batches):
    g = torch.Generator().manual_seed(0)
    rows, width, k = 12, 5, 2  # 6 prompts of 2 completions
    lengths = torch.tensor([5, 1, 3, 2, 4, 4, 1, 1, 5, 3, 2, 5])
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).double()
    values = torch.randn(rows, width, generator=g, dtype=torch.float64)
    reference_input = values.clone().requires_grad_(True)
    _reference_prompt_mean(reference_input, mask, k).backward()

    # the trainer's way: weights from whole groups before the split, rows shuffled and cut over ranks
    # and micro-batches; each rank's micro-batch losses summed, the ranks' gradients averaged (DDP)
    weights = group_token_weights(mask.sum(1), k)
    order = torch.randperm(rows, generator=g)
    window_weight = (mask * weights.unsqueeze(1)).sum()
    split_input = values.clone().requires_grad_(True)
    per_rank = order.chunk(ranks)
    total = 0
    for rank_rows in per_rank:
        for part in rank_rows.chunk(micro_batches):
            ctx = ReductionContext(num_processes=ranks, token_weight=weights[part], window_weight=window_weight)
            total = total + prompt_mean(split_input[part], mask[part], ctx) / ranks
    total.backward()
    torch.testing.assert_close(split_input.grad, reference_input.grad, rtol=1e-12, atol=1e-14)
    # and it is not the token mean: prompts with short groups weigh more per token
    token_mean_grad = mask / mask.sum()
    assert (split_input.grad - token_mean_grad).abs().max() > 1e-3


def test_prompt_mean_refuses_to_run_without_its_weights():
    with pytest.raises(ValueError, match="prompt_mean needs"):
        prompt_mean(torch.zeros(2, 3), torch.ones(2, 3), ReductionContext())


def _one_sgd_step(tiny_model_dir, tmp_path, name: str, **options) -> tuple[dict, list[dict]]:
    """The parameter change of one plain SGD step (lr 1): minus the gradient, and the step's logs."""
    from transformers import AutoModelForCausalLM

    from swift_cispo import GRPOTrainer

    def reward(completions, prompts, **kwargs):
        # prompts with an even first digit get the same reward whatever the completion: flat groups
        return [1.0 if int(p[0]) % 2 == 0 else float(len(c)) for p, c in zip(prompts, completions)]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = grpo_config(
        tmp_path / name, max_steps=1, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=0.0, weight_decay=0.0, max_completion_length=6, **options,
    )  # fmt: skip
    dataset = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(4) for b in range(4)]})
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset)
    trainer.train()
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    return delta, trainer.state.log_history


def test_zero_variance_filter_only_renormalises_the_step(tiny_model_dir, tmp_path):
    plain, plain_logs = _one_sgd_step(tiny_model_dir, tmp_path, "plain")
    filtered, logs = _one_sgd_step(tiny_model_dir, tmp_path, "filtered", zero_variance_filter=True)
    flat = logs[0]["zero_variance/filtered_groups"]
    assert flat == plain_logs[0]["frac_reward_zero_std"] * 2  # 2 groups per step, TRL's own count of flat ones
    assert flat == 1  # this seed's batch: one of the two prompts has an even first digit
    # the same rollout (same seed); flat groups had zero advantage, so only the token count changed
    plain_vector = torch.cat([plain[n].flatten() for n in plain]).double()
    filtered_vector = torch.cat([filtered[n].flatten() for n in plain]).double()
    scale = filtered_vector.norm() / plain_vector.norm()  # all tokens / informative tokens
    assert (filtered_vector - scale * plain_vector).norm() / filtered_vector.norm() < 1e-5
    assert scale > 1.05, scale  # the flat group's tokens had diluted the step
