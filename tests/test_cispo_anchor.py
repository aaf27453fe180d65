"""--cispo_anchor: what CISPO's importance weight divides by, checked at the gradient in the real trainer.

The rollout here comes from transformers' generate, which reports no sampler log-probs; the test gives the
trainer sampler log-probs far from its own (as a stale or numerically different vLLM would), some of them
missing (NaN), and recomputes the loss from a plain forward pass:

- ``sampler``: ``-A * sg(min(pi_theta / pi_sampler, eps_high)) * log pi_theta``, no other factor;
- ``old`` (default): CISPO's weight is 1 on this first pass (pi_old = pi_theta), times the rollout correction
  ``min(pi_old / pi_sampler, 2)``;

unscored tokens fall back to pi_old in both.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from swift_cispo import GRPOConfig, GRPOTrainer
from swift_cispo.demo import DEMO_MODEL_DIR
from swift_cispo.trainers.config import rollout_within_one_step

EPSILON_HIGH, TRUNCATION = 1.5, 2.0


class WithSampler(GRPOTrainer):
    checks: list = []

    def _compute_loss(self, model, inputs):
        mask = inputs["completion_mask"]
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], mask], dim=1)
        width = inputs["completion_ids"].size(1)

        def log_probs():
            logits = model(input_ids=ids, attention_mask=attention).logits[:, -width - 1 : -1] / self.temperature
            return torch.log_softmax(logits.float(), -1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)

        with torch.no_grad():
            current = log_probs()
        noise = torch.empty_like(current).uniform_(-1.5, 1.5, generator=torch.Generator().manual_seed(0))
        sampler = current + noise
        sampler[:, ::3] = float("nan")  # tokens the sampler did not score
        inputs["sampling_per_token_logps"] = sampler
        loss = super()._compute_loss(model, inputs)

        reference_log_probs = log_probs()
        scored = torch.where(torch.isnan(sampler), current, sampler)
        if self.args.cispo_anchor == "sampler":
            weight = torch.clamp(torch.exp(current - scored), max=EPSILON_HIGH)
        else:
            weight = torch.clamp(torch.exp(current - scored), max=TRUNCATION)  # CISPO's own weight is 1 here
        advantages = inputs["advantages"].unsqueeze(1)
        reference = -(advantages * weight * reference_log_probs * mask).sum() / inputs["window_num_tokens"]
        params = [p for p in model.parameters() if p.requires_grad]
        ours = torch.autograd.grad(loss, params, retain_graph=True)
        theirs = torch.autograd.grad(reference, params)
        gap = max((a - b).abs().max().item() for a, b in zip(ours, theirs))
        # the sampler gap TRL logs after its old-log-prob pass, here read off the trainer's own forward pass
        sampler_gap = (current - sampler).abs()[mask.bool() & ~torch.isnan(sampler)]
        WithSampler.checks.append({"gap": gap / max(b.abs().max().item() for b in theirs), "capped": (torch.exp(current - scored) > EPSILON_HIGH).any().item(),
                                   "sampler_gap": (sampler_gap.mean().item(), sampler_gap.max().item())})  # fmt: skip
        return loss


@pytest.mark.parametrize("anchor", ["sampler", "old"])
def test_the_weight_divides_by_the_chosen_anchor(tmp_path, anchor):
    WithSampler.checks = []
    config = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, max_completion_length=8, max_steps=1,
        report_to="none", use_cpu=True, save_strategy="no", bf16=False, seed=0, epsilon_high=EPSILON_HIGH,
        rollout_importance_sampling_threshold=TRUNCATION, cispo_anchor=anchor,
    )  # fmt: skip
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10, 20) for b in range(1, 5)]
    trainer = WithSampler(model=str(DEMO_MODEL_DIR), reward_funcs=lambda completions, **k: [float(i % 3) for i in range(len(completions))],
                          args=config, train_dataset=Dataset.from_list(rows))  # fmt: skip
    trainer.train()
    (check,) = WithSampler.checks
    assert check["capped"]  # the noise pushes some ratios past the cap, so the clip is exercised
    assert check["gap"] < 1e-5, check
    logged = [row for row in trainer.state.log_history if "cispo_clip_ratio" in row]
    mean, top = check["sampler_gap"]
    assert logged[0]["sampling/sampling_logp_difference/mean"] == pytest.approx(mean, rel=1e-5)
    assert logged[0]["sampling/sampling_logp_difference/max"] == pytest.approx(top, rel=1e-5)
    if anchor == "sampler":
        assert logged[0]["cispo_clip_ratio"] > 0 and not any("rollout_is/weight_mean" in row for row in trainer.state.log_history)
    else:
        assert logged[0]["cispo_clip_ratio"] == 0 and logged[0]["rollout_is/weight_mean"] != 1.0


@pytest.mark.parametrize(
    ("accumulation", "per_generation", "iterations", "old_pass"),
    [(4, 4, 1, False), (8, 4, 1, False), (1, 1, 1, False), (2, 4, 1, True), (4, 4, 2, True), (4, 2, 2, False)],
)
def test_the_old_log_prob_pass_runs_only_when_an_update_falls_inside_a_rollout(tmp_path, accumulation, per_generation, iterations, old_pass):
    """With vLLM, TRL runs a no-grad pass over every rollout for pi_old. Within one optimizer step pi_old is
    pi_theta, so that pass is skipped and the loss reads it off its own forward (the gradient test above)."""
    config = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, gradient_accumulation_steps=accumulation,
        steps_per_generation=per_generation, num_iterations=iterations, use_cpu=True, report_to="none",
    )  # fmt: skip
    assert rollout_within_one_step(accumulation, per_generation, iterations) is not old_pass
    assert config.vllm_importance_sampling_correction is old_pass  # TRL's switch for its pass
    config = GRPOConfig(output_dir=str(tmp_path), rollout_importance_sampling_mode="none", num_iterations=2, use_cpu=True, report_to="none")
    assert config.vllm_importance_sampling_correction is False  # no correction: TRL's pass runs only for the update inside


def test_an_anchor_for_another_loss_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cispo_anchor applies to loss_type=cispo only"):
        GRPOConfig(output_dir=str(tmp_path), use_cpu=True, loss_type="dapo", cispo_anchor="sampler")
    with pytest.raises(ValueError, match="cispo_anchor must be one of old, sampler"):
        GRPOConfig(output_dir=str(tmp_path), use_cpu=True, cispo_anchor="rollout")
