"""The shared loss types give TRL 1.16's own gradients: same model, same batch, both trainers'
``_compute_loss``, gradients compared element by element."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math

import pytest
import torch
import trl
from datasets import Dataset

from swift_cispo import GRPOConfig, GRPOTrainer


def _reward(completions, **kwargs):
    return [0.0 for _ in completions]


def _make_trainers(model_dir, tmp_path, loss_type, **overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = Dataset.from_dict({"prompt": ["1+2=", "3+4="] * 4})
    kwargs = dict(
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=5,
        loss_type=loss_type,
        epsilon=0.2,
        epsilon_high=0.28 if loss_type != "cispo" else 2.0,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        gradient_accumulation_steps=2,
        bf16=False,  # TRL would autocast to bf16 on the CPU; parity is checked in full precision
        **overrides,
    )
    ours = GRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=_reward,
        args=GRPOConfig(output_dir=str(tmp_path / "ours"), **kwargs),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trl_fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    theirs = trl.GRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=_reward,
        args=trl.GRPOConfig(output_dir=str(tmp_path / "theirs"), **{k: v for k, v in kwargs.items() if k in trl_fields}),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    return ours, theirs


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch, prompt_len, completion_len = 4, 4, 5
    prompt_ids = torch.randint(3, 60, (batch, prompt_len), generator=g)
    completion_ids = torch.randint(3, 60, (batch, completion_len), generator=g)
    completion_mask = torch.zeros(batch, completion_len, dtype=torch.long)
    for i, n in enumerate([5, 2, 0, 4]):  # unequal lengths, one empty completion
        completion_mask[i, :n] = 1
    with torch.no_grad():
        logits = model(torch.cat([prompt_ids, completion_ids], 1)).logits[:, prompt_len - 1 : -1]
        logps = torch.log_softmax(logits, -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    # strongly off-policy old log-probs so that clipping is active in both directions
    old = logps + torch.randn(batch, completion_len, generator=g) * 0.7
    old[0, 1] = logps[0, 1] - 3.0  # r = e^3 on a positive-advantage token: above every cap used here
    num_tokens = completion_mask.sum().float()
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.3, -0.7, 0.4, -1.1]),
        "old_per_token_logps": old,
        "num_items_in_batch": num_tokens,
        "window_num_tokens": num_tokens,  # default steps_per_generation == accumulation: the same window
    }


def _grads(trainer, inputs):
    # The loss math is compared bit for bit: both trainers take TRL's fused LM head here. On a CPU swift-cispo
    # computes log-probs with the model's own head instead (trainers/log_probs.py), equal to float32 rounding:
    # tests/test_log_probs.py checks that path against TRL's at the gradient.
    trainer._get_per_token_logps_and_entropies = functools.partial(trl.GRPOTrainer._get_per_token_logps_and_entropies, trainer)
    trainer.model.train()
    # set by Trainer's training loop; 2 so that the division by accumulation is exercised
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, dict(inputs))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo"])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_gradients_equal_trl(tiny_model_dir, tmp_path, loss_type, beta):
    ours, theirs = _make_trainers(tiny_model_dir, tmp_path, loss_type, beta=beta)
    inputs = _batch(ours.model)
    if beta:
        inputs["ref_per_token_logps"] = inputs["old_per_token_logps"] - 0.3
    our_loss, our_grads = _grads(ours, inputs)
    their_loss, their_grads = _grads(theirs, inputs)
    assert our_grads.keys() == their_grads.keys() and len(our_grads) > 10
    assert torch.equal(our_loss, their_loss), (our_loss, their_loss)
    # The policy loss is bit for bit TRL's. The KL's bias-correction ratio is computed with padded
    # positions zeroed before exp (so garbage padding cannot turn into NaN gradients): with beta > 0
    # the gradients then agree to float32 rounding.
    tolerance = dict(rtol=0, atol=0) if beta == 0 else dict(rtol=1e-6, atol=1e-6)
    for name in our_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], **tolerance, msg=name)
    # the batch really was off-policy: TRL logged clipping (PPO family) or capping (cispo)
    logged = theirs._metrics["train"]
    clipped = logged["cispo_clip_ratio"] if loss_type == "cispo" else logged["clip_ratio/region_mean"]
    assert clipped[-1] > 0
    ours_logged = ours._metrics["train"]
    if loss_type == "cispo":
        assert ours_logged["cispo_clip_ratio"][-1] == pytest.approx(clipped[-1])
    else:
        assert ours_logged["clip_ratio/region_mean"][-1] == pytest.approx(clipped[-1])
    assert ours_logged["entropy"][-1] == pytest.approx(logged["entropy"][-1], rel=1e-6)


@pytest.mark.parametrize(
    "mode,threshold,factor",
    [("token_truncate", 2.0, 1.5), ("token_truncate", 1.2, 1.2), ("token_mask", 1.2, 0.0), ("none", 2.0, 1.0)],
)
def test_rollout_correction_scales_the_gradient(tiny_model_dir, tmp_path, mode, threshold, factor):
    """Sampler log-probs given directly: with pi_old / pi_sampler = 1.5 on every token the CISPO
    gradient (linear in the per-token weight) is exactly factor x the uncorrected one."""
    ours, _ = _make_trainers(
        tiny_model_dir, tmp_path, "cispo", rollout_importance_sampling_mode=mode,
        rollout_importance_sampling_threshold=threshold,
    )  # fmt: skip
    inputs = _batch(ours.model)
    _, plain = _grads(ours, inputs)
    corrected_inputs = dict(inputs, sampling_per_token_logps=inputs["old_per_token_logps"] - math.log(1.5))
    _, corrected = _grads(ours, corrected_inputs)
    for name in plain:
        torch.testing.assert_close(corrected[name], plain[name] * factor, rtol=1e-4, atol=1e-6)
    if mode != "none":
        assert ours._metrics["train"]["rollout_is/weight_mean"][-1] == pytest.approx(factor)


def test_fp32_lm_head(tiny_model_dir, tmp_path):
    """MiniMax-M1's precision fix: in a bf16 model, the LM head (logits, softmax, log-probs) runs in
    fp32. Reference: the model's own final hidden states through the head in float64, so the
    comparison isolates the head's precision from the bf16 backbone's."""
    from transformers import AutoModelForCausalLM

    inputs = _batch(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    keep = inputs["completion_ids"].size(1)
    targets = inputs["completion_ids"]
    errors = {}
    for fp32_head in (False, True):
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16),
            reward_funcs=_reward,
            args=GRPOConfig(
                output_dir=str(tmp_path / str(fp32_head)), per_device_train_batch_size=4, num_generations=2,
                max_completion_length=5, report_to="none", use_cpu=True, bf16=True, cast_lm_head_to_fp32=fp32_head,
            ),
            train_dataset=Dataset.from_dict({"prompt": ["1+2="] * 8}),
        )  # fmt: skip
        model = trainer.model
        assert (model.lm_head.weight.dtype == torch.float32) == fp32_head
        with torch.no_grad():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, torch.ones_like(ids), keep)
            with trainer.accelerator.autocast():
                hidden = model.model(input_ids=ids).last_hidden_state[:, -keep - 1 : -1]
            logits = hidden.double() @ model.lm_head.weight.double().T
            exact = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        errors[fp32_head] = (logps.double() - exact).abs().max().item()
    assert errors[True] < 1e-4 < errors[False], errors
