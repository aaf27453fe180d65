"""Loss metrics are reduced once per optimizer step: two collectives and one host copy, whatever the split."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from swift_cispo.trainers.metrics import StepMetrics

PACKAGE = str(Path(__file__).resolve().parents[1] / "swift_cispo")


class CountingAccelerator:
    """A world of ``ranks`` processes simulated in one: reduce sums over the given per-rank copies."""

    def __init__(self, per_rank_extra: list[torch.Tensor] | None = None):
        self.num_processes = 1
        self.calls = {"reduce": 0, "gather": 0}

    def reduce(self, tensor, reduction="sum"):
        self.calls["reduce"] += 1
        return tensor.clone()

    def gather(self, tensor):
        self.calls["gather"] += 1
        return tensor.clone()


def test_token_weighted_means_and_maxima_over_micro_batches():
    torch.manual_seed(0)
    metrics = StepMetrics()
    masks = [torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.tensor([[1, 1, 1], [0, 0, 0]]), torch.tensor([[0, 0, 0], [0, 0, 0]])]
    values = [torch.randn(2, 3) for _ in masks]
    for mask, value in zip(masks, values):
        metrics.add_token_means(mask, weight=value, constant=torch.tensor(2.0))
        metrics.add_token_maxima(mask, top=value)
    accelerator = CountingAccelerator()
    result = metrics.reduce(accelerator)
    picked = torch.cat([v[m.bool()] for v, m in zip(values, masks)]).double()
    assert result["weight"] == pytest.approx(picked.mean().item(), rel=1e-12)
    assert result["constant"] == 2.0
    assert result["top"] == picked.max().item()
    assert accelerator.calls == {"reduce": 1, "gather": 1}
    assert not metrics  # forgotten after the reduction


def test_a_maximum_no_token_saw_is_not_logged():
    metrics = StepMetrics()
    metrics.add_token_maxima(torch.zeros(2, 3), top=torch.ones(2, 3))
    assert metrics.reduce(CountingAccelerator()) == {}


def _count_calls(monkeypatch, owner, name: str, counter: dict, key: str):
    """Count calls of ``owner.name`` made from swift_cispo's own files."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if sys._getframe(1).f_code.co_filename.startswith(PACKAGE):
            counter[key] = counter.get(key, 0) + 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def test_a_training_step_issues_two_metric_collectives_and_one_sync_per_micro_batch(tmp_path, monkeypatch, tiny_model_dir):
    """4 micro-batches: 1 all-reduce of the step's token count + 1 of the metrics, 1 all-gather of the maxima;
    host syncs: 1 per micro-batch (the NaN guard) + 1 for the metrics, and the sampler's permutation once per
    epoch (a CPU tensor, swift_cispo.trainers.resampling.EpochSampler)."""
    from swift_cispo import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4, gradient_accumulation_steps=4,
        steps_per_generation=4, max_completion_length=4, max_steps=1, logging_steps=1, report_to="none", use_cpu=True,
        save_strategy="no", gradient_checkpointing=False, bf16=False, seed=0,
    )
    trainer = GRPOTrainer(
        model=str(tiny_model_dir), reward_funcs=lambda completions, **kw: [float(len(c)) + 0.1 * i for i, c in enumerate(completions)],
        args=config, train_dataset=Dataset.from_dict({"prompt": ["1+2=", "3+4=", "5+5=", "9+1="] * 4}),
    )
    counts: dict = {}
    _count_calls(monkeypatch, trainer.accelerator, "reduce", counts, "reduce")
    _count_calls(monkeypatch, trainer.accelerator, "gather", counts, "gather")
    _count_calls(monkeypatch, torch.Tensor, "item", counts, "host")
    _count_calls(monkeypatch, torch.Tensor, "tolist", counts, "host")
    losses = []
    original = trainer._compute_loss
    monkeypatch.setattr(trainer, "_compute_loss", lambda model, inputs: losses.append(1) or original(model, inputs))
    trainer.train()
    assert len(losses) == 4
    assert counts == {"reduce": 2, "gather": 1, "host": 4 + 1 + 1}, counts
    logged = [h for h in trainer.state.log_history if "cispo/is_weight_mean" in h]
    assert len(logged) == 1 and logged[0]["cispo/is_weight_mean"] == pytest.approx(1.0)
