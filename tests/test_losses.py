"""Each built-in loss against an independent, token-by-token reference of its formula (float64).

The references below are written from the papers' formulas with Python scalars and explicit
branches, not with the library's tensor code: they compute the *gradient* of the scalar objective
with respect to each token's log-prob, which is what an optimizer step consumes.
"""

from __future__ import annotations

import math

import pytest
import torch

from swift_cispo.losses import (
    REDUCTIONS,
    LossConfig,
    ReductionContext,
    available_losses,
    get_loss,
    register_loss,
)
from swift_cispo.losses.registry import _LOSSES



@pytest.fixture(autouse=True)
def _float64():
    """The references are float64, and so is every tensor these tests build; for these tests only
    (conftest.py puts the session's float32 back after each test)."""
    torch.set_default_dtype(torch.float64)
    yield


BUILT_IN = ["bnpo", "cispo", "dapo", "dr_grpo", "grpo"]


def make_batch(seed=0, batch=6, length=7, spread=0.5, lengths=None):
    g = torch.Generator().manual_seed(seed)
    log_probs = -torch.rand(batch, length, generator=g) * 3 - 0.05
    old_log_probs = log_probs + torch.randn(batch, length, generator=g) * spread
    advantages = torch.randn(batch, 1, generator=g)
    if lengths is None:
        lengths = torch.randint(1, length + 1, (batch,), generator=g).tolist()
    mask = torch.zeros(batch, length)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return log_probs, old_log_probs, advantages, mask


def library_grad(name, log_probs, old_log_probs, advantages, mask, config, ctx):
    spec = get_loss(name)
    lp = log_probs.clone().requires_grad_(True)
    out = spec.fn(lp, old_log_probs, advantages, mask, config)
    loss = REDUCTIONS[spec.reduction](out.per_token_loss, mask, ctx)
    loss.backward()
    return loss.item(), lp.grad


# --------------------------------------------------------------------------- references
def ref_token_grad_cispo(lp, old, a, cap):
    """d/d lp of -sg(min(r, cap)) * A * lp: the weight is a constant."""
    return -min(math.exp(lp - old), cap) * a


def ref_token_grad_ppo(lp, old, a, eps_low, eps_high):
    """d/d lp of -min(r A, clip(r) A) with r = exp(lp - old).

    Inside the clip range both terms equal r A, so the gradient is -A r. Outside it the clipped
    term is constant: the gradient is -A r only when the unclipped term is the smaller one.
    """
    r = math.exp(lp - old)
    if 1 - eps_low <= r <= 1 + eps_high:
        return -a * r
    clipped = min(max(r, 1 - eps_low), 1 + eps_high)
    return -a * r if r * a < clipped * a else 0.0


def ref_token_value(name, lp, old, a, eps_low, eps_high):
    r = math.exp(lp - old)
    if name == "cispo":
        return -min(r, eps_high) * a * lp
    return -min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a)


def reference(name, log_probs, old_log_probs, advantages, mask, eps_low, eps_high, max_len, window_tokens=None):
    """Scalar objective and its gradient, by explicit loops over sequences and tokens."""
    batch, length = mask.shape
    grad = torch.zeros(batch, length)
    token_grad = lambda lp, old, a: (  # noqa: E731
        ref_token_grad_cispo(lp, old, a, eps_high) if name == "cispo" else ref_token_grad_ppo(lp, old, a, eps_low, eps_high)
    )
    total_tokens = int(mask.sum().item()) if window_tokens is None else window_tokens
    value = 0.0
    for i in range(batch):
        n_i = int(mask[i].sum().item())
        for t in range(length):
            if mask[i, t] == 0:
                continue
            lp, old, a = log_probs[i, t].item(), old_log_probs[i, t].item(), advantages[i, 0].item()
            if name == "grpo":  # mean over sequences of the per-sequence token mean
                w = 1.0 / (batch * max(n_i, 1))
            elif name == "bnpo":  # token mean over the batch
                w = 1.0 / max(total_tokens, 1)
            elif name == "dr_grpo":  # constant length normaliser
                w = 1.0 / (batch * max_len)
            else:  # dapo, cispo: token mean over the optimizer step's tokens
                w = 1.0 / max(total_tokens, 1)
            value += w * ref_token_value(name, lp, old, a, eps_low, eps_high)
            grad[i, t] = w * token_grad(lp, old, a)
    return value, grad


# --------------------------------------------------------------------------- tests
def test_registry_lists_the_built_in_losses():
    assert set(BUILT_IN) <= set(available_losses())
    assert get_loss("cispo").reduction == "global_token_mean"
    assert get_loss("grpo").reduction == "sequence_mean"
    assert get_loss("bnpo").reduction == "batch_token_mean"
    assert get_loss("dr_grpo").reduction == "constant_length"
    assert get_loss("dapo").reduction == "global_token_mean"


def test_unknown_loss_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown loss_type 'vespo'; registered loss types: bnpo, cispo, dapo"):
        get_loss("vespo")


def test_register_loss_adds_a_loss_and_rejects_unknown_reductions():
    @register_loss("unit_test_reinforce", reduction="batch_token_mean")
    def reinforce(log_probs, old_log_probs, advantages, mask, config):
        from swift_cispo.losses import LossOutput

        return LossOutput(per_token_loss=-advantages * log_probs)

    try:
        assert "unit_test_reinforce" in available_losses()
        assert get_loss("unit_test_reinforce").fn is reinforce
    finally:
        _LOSSES.pop("unit_test_reinforce")
    with pytest.raises(ValueError, match="unknown reduction 'nope'"):
        register_loss("x", reduction="nope")


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_matches_reference(name, seed):
    eps_low, eps_high = (0.2, 5.0) if name == "cispo" else (0.2, 0.28)
    batch = make_batch(seed, spread=0.6)
    log_probs, old, adv, mask = batch
    window = int(mask.sum().item())
    config = LossConfig(epsilon_low=eps_low, epsilon_high=eps_high)
    ctx = ReductionContext(max_completion_length=mask.size(1), window_num_tokens=torch.tensor(float(window)))
    value, grad = library_grad(name, *batch, config, ctx)
    ref_value, ref_grad = reference(name, *batch, eps_low, eps_high, mask.size(1))
    assert value == pytest.approx(ref_value, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)
    # the test can fail: a clipped token really is present for the PPO family
    if name != "cispo":
        r = torch.exp(log_probs - old)
        assert (((r > 1 + eps_high) & (adv > 0)) | ((r < 1 - eps_low) & (adv < 0)))[mask.bool()].any()


def test_cispo_caps_the_weight_but_keeps_every_gradient():
    """Far above the cap (even where exp overflows) the weight is exactly epsilon_high and the
    gradient is -cap * A / N: never zero (unlike PPO-clip), never NaN."""
    log_probs = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    old = log_probs - torch.tensor([[0.0, 50.0, 1000.0, math.log(2.0)]])  # r = 1, e^50, inf, 2
    adv = torch.tensor([[1.5]])
    mask = torch.ones(1, 4)
    ctx = ReductionContext(window_num_tokens=torch.tensor(4.0))
    spec = get_loss("cispo")
    lp = log_probs.clone().requires_grad_(True)
    out = spec.fn(lp, old, adv, mask, LossConfig(epsilon_high=5.0))
    REDUCTIONS[spec.reduction](out.per_token_loss, mask, ctx).backward()
    expected = -torch.tensor([[1.0, 5.0, 5.0, 2.0]]) * 1.5 / 4
    torch.testing.assert_close(lp.grad, expected, rtol=1e-12, atol=0)
    assert out.metrics["cispo_clip_ratio"].tolist() == [[0.0, 1.0, 1.0, 0.0]]

    # the same tokens under PPO-clip (dapo): the capped ones get no gradient at all
    lp2 = log_probs.clone().requires_grad_(True)
    ppo = get_loss("dapo")
    out2 = ppo.fn(lp2, old.clamp(min=log_probs - 10), adv, mask, LossConfig(epsilon_low=0.2, epsilon_high=0.28))
    REDUCTIONS[ppo.reduction](out2.per_token_loss, mask, ctx).backward()
    assert lp2.grad[0, 0].item() != 0 and lp2.grad[0, 1].item() == 0 and lp2.grad[0, 3].item() == 0


@pytest.mark.parametrize("name", BUILT_IN)
def test_empty_completions_give_finite_loss_and_gradients(name):
    log_probs, old, adv, mask = make_batch(3, lengths=[0, 3, 0, 7, 1, 0])
    old = old.clone()
    old[mask == 0] = log_probs[mask == 0] - 500.0  # garbage in the padding must not leak
    config = LossConfig(epsilon_low=0.2, epsilon_high=5.0 if name == "cispo" else 0.28)
    ctx = ReductionContext(max_completion_length=7, window_num_tokens=mask.sum())
    value, grad = library_grad(name, log_probs, old, adv, mask, config, ctx)
    assert math.isfinite(value) and torch.isfinite(grad).all()
    assert (grad[mask == 0] == 0).all()
    # an all-empty batch: loss 0, gradient 0
    empty = torch.zeros_like(mask)
    value, grad = library_grad(name, log_probs, old, adv, empty, config, ReductionContext(window_num_tokens=torch.tensor(0.0)))
    assert value == 0.0 and (grad == 0).all()


@pytest.mark.parametrize("name", ["cispo", "dapo"])
def test_global_token_mean_is_invariant_to_the_split(name):
    """Ranks x micro-batches: summing micro-batch gradients and averaging over ranks (as DDP does)
    gives the one-batch gradient, for unequal completion lengths."""
    log_probs, old, adv, mask = make_batch(5, batch=8, length=9, spread=0.8)
    config = LossConfig(epsilon_low=0.2, epsilon_high=5.0 if name == "cispo" else 0.28)
    window = mask.sum()
    _, whole = library_grad(name, log_probs, old, adv, mask, config, ReductionContext(window_num_tokens=window))
    for ranks, micro in [(1, 4), (2, 1), (2, 2), (4, 2)]:
        grad = torch.zeros_like(whole)
        shards = torch.arange(8).chunk(ranks)
        for shard in shards:
            for rows in shard.chunk(micro):
                ctx = ReductionContext(num_processes=ranks, gradient_accumulation_steps=micro, window_num_tokens=window)
                _, g = library_grad(name, log_probs[rows], old[rows], adv[rows], mask[rows], config, ctx)
                grad[rows] += g / ranks  # DDP averages the ranks' gradients
        torch.testing.assert_close(grad, whole, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cap", [100.0, 1.05])
def test_sequence_level_ratio_is_the_geometric_mean_of_the_token_ratios(cap):
    """GSPO's ratio for CISPO: every token of sequence i is weighted by min(exp(mean_t log r_it), cap),
    a constant; the gradient of the step's token mean is then -w_i * A_i / N per token."""
    log_probs, old, adv, mask = make_batch(7)
    config = LossConfig(epsilon_high=cap, importance_sampling_level="sequence")
    ctx = ReductionContext(window_num_tokens=mask.sum())
    _, grad = library_grad("cispo", log_probs, old, adv, mask, config, ctx)
    n_total = mask.sum().item()
    expected = torch.zeros_like(log_probs)
    capped = 0
    for i in range(mask.size(0)):
        n = int(mask[i].sum())
        geo = math.exp(sum((log_probs[i, t] - old[i, t]).item() for t in range(n)) / n)
        capped += geo > cap
        for t in range(n):
            expected[i, t] = -min(geo, cap) * adv[i, 0].item() / n_total
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    assert (capped > 0) == (cap < 2)  # the tight cap really binds


# --------------------------------------------------------------------------- SAPO
def ref_token_grad_sapo(lp, old, a, tau_pos, tau_neg):
    """d/d lp of -sigmoid(tau (r - 1)) * 4 / tau * A with r = exp(lp - old): -A * 4 s (1 - s) * r."""
    tau = tau_pos if a > 0 else tau_neg
    r = math.exp(lp - old)
    s = 1 / (1 + math.exp(-tau * (r - 1)))
    return -a * 4 * s * (1 - s) * r


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sapo_gradient_matches_reference(seed):
    tau_pos, tau_neg = 1.0, 1.05
    log_probs, old, adv, mask = make_batch(seed, spread=0.6)
    config = LossConfig(sapo_tau_pos=tau_pos, sapo_tau_neg=tau_neg)
    ctx = ReductionContext(max_completion_length=mask.size(1), window_num_tokens=torch.tensor(float(mask.sum())))
    value, grad = library_grad("sapo", log_probs, old, adv, mask, config, ctx)
    batch, length = mask.shape
    ref_value, ref_grad = 0.0, torch.zeros(batch, length)
    for i in range(batch):
        n_i = int(mask[i].sum().item())
        for t in range(n_i):  # sequence mean of the token mean, as grpo
            lp, o, a = log_probs[i, t].item(), old[i, t].item(), adv[i, 0].item()
            tau = tau_pos if a > 0 else tau_neg
            r = math.exp(lp - o)
            ref_value += -(4 / tau) / (1 + math.exp(-tau * (r - 1))) * a / (batch * n_i)
            ref_grad[i, t] = ref_token_grad_sapo(lp, o, a, tau_pos, tau_neg) / (batch * n_i)
    assert value == pytest.approx(ref_value, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)


def test_sapo_is_the_policy_gradient_on_policy_and_fades_off_policy():
    """w(1) = 1: on-policy SAPO's gradient equals REINFORCE's; far off-policy it is small but not zero."""
    lp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0 - 3.0]])  # second token: r = e^3
    adv = torch.tensor([[2.0]])
    out = get_loss("sapo").fn(lp, old, adv, torch.ones(1, 2), LossConfig(sapo_tau_pos=1.0, sapo_tau_neg=1.05))
    out.per_token_loss.sum().backward()
    assert lp.grad[0, 0].item() == pytest.approx(-2.0, rel=1e-12)
    assert -2.0 * math.exp(3) < lp.grad[0, 1].item() < 0  # damped below the unclipped -A r, still pushing
    assert abs(lp.grad[0, 1].item()) < 1.0
