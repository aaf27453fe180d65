"""The plain LM-head path (swift_cispo/trainers/log_probs.py) against TRL's fused head, at the gradient.

On a CPU the trainer computes per-token log-probs with the model's own head on the completion positions; TRL's
fused head (the reference here, called through TRL's own method on the same trainer) projects in tiles. Both must
give the same log-probs, entropies and parameter gradients, padding included.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import GRPOTrainer as TRLGRPOTrainer

from swift_cispo import GRPOConfig, GRPOTrainer
from swift_cispo.demo import DEMO_MODEL_DIR
from swift_cispo.memory import LOGITS_BUDGET_BYTES, plain_head_fits


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    config = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("out")), per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
        report_to="none", use_cpu=True, save_strategy="no", bf16=False, seed=0, temperature=0.7,
    )  # fmt: skip
    rows = [{"prompt": f"{a}+{b}="} for a in range(10, 14) for b in range(1, 3)]
    return GRPOTrainer(model=str(DEMO_MODEL_DIR), reward_funcs=lambda completions, **k: [0.0] * len(completions), args=config,
                       train_dataset=Dataset.from_list(rows))  # fmt: skip


def _batch(vocab: int):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (6, 14), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded prompt
    mask[1, -2:] = 0  # a completion that stopped early
    mask[2, -5:] = 0
    return ids, mask


def _run(method, trainer, ids, mask, keep, batch_size):
    trainer.model.zero_grad()
    log_probs, entropies, _ = method(trainer, trainer.model, ids, mask, keep, batch_size=batch_size, compute_entropy=True)
    weights = torch.linspace(-1.0, 2.0, log_probs.numel()).view_as(log_probs)
    (log_probs * weights).sum().backward()
    grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    return log_probs.detach(), entropies, grads


@pytest.mark.parametrize("batch_size", [None, 4])  # one chunk, or chunks of 4 rows (the last one shorter)
def test_plain_head_matches_trls_fused_head_at_the_gradient(trainer, batch_size):
    ids, mask = _batch(trainer.model.config.vocab_size)
    keep = 8
    ours = _run(GRPOTrainer._get_per_token_logps_and_entropies, trainer, ids, mask, keep, batch_size)
    theirs = _run(TRLGRPOTrainer._get_per_token_logps_and_entropies, trainer, ids, mask, keep, batch_size)
    assert ours[0].shape == (6, keep)
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-5, rtol=1e-5)
    assert (ours[0][1, -2:] == 0).all() and (ours[1][2, -5:] == 0).all()  # padded positions, as TRL leaves them
    assert len(ours[2]) == len(theirs[2]) > 0
    for a, b in zip(ours[2], theirs[2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the temperature is applied: at temperature 1 the log-probs differ
    trainer.temperature = 1.0
    try:
        plain = _run(GRPOTrainer._get_per_token_logps_and_entropies, trainer, ids, mask, keep, batch_size)[0]
    finally:
        trainer.temperature = 0.7
    assert (plain - ours[0]).abs().max() > 1e-2


def test_logits_too_large_for_the_budget_stay_on_trls_fused_head():
    assert plain_head_fits(32, 65, 49152)  # SmolLM2, 32 completions of 64 tokens: 409 MB
    assert not plain_head_fits(8, 4097, 151936)  # Qwen's vocabulary, 4096-token completions: 20 GB
    assert plain_head_fits(1, LOGITS_BUDGET_BYTES // 4, 1) and not plain_head_fits(1, LOGITS_BUDGET_BYTES // 4 + 1, 1)
