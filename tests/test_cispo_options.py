"""CISPO's options and the PPO dual clip, each against an independent float64 reference of its
formula at the level of gradients; the rollout correction by its four modes."""

from __future__ import annotations

import math

import pytest
import torch

from swift_cispo.losses import REDUCTIONS, LossConfig, ReductionContext, get_loss, rollout_correction

DT = torch.float64


def batch(seed=0, rows=6, length=8, spread=0.9):
    g = torch.Generator().manual_seed(seed)
    log_probs = (-torch.rand(rows, length, generator=g, dtype=DT) * 3 - 0.05)
    old = log_probs + torch.randn(rows, length, generator=g, dtype=DT) * spread
    adv = torch.randn(rows, 1, generator=g, dtype=DT)
    mask = torch.zeros(rows, length, dtype=DT)
    for i, n in enumerate(torch.randint(1, length + 1, (rows,), generator=g).tolist()):
        mask[i, :n] = 1
    return log_probs, old, adv, mask


def grad_of(name, log_probs, old, adv, mask, config):
    spec = get_loss(name)
    lp = log_probs.clone().requires_grad_(True)
    out = spec.fn(lp, old, adv, mask, config)
    REDUCTIONS[spec.reduction](out.per_token_loss, mask, ReductionContext(window_num_tokens=mask.sum())).backward()
    return lp.grad, out


def reference_grad(log_probs, old, adv, mask, token_grad):
    n = mask.sum().item()
    grad = torch.zeros_like(log_probs)
    for i in range(mask.size(0)):
        for t in range(mask.size(1)):
            if mask[i, t]:
                grad[i, t] = token_grad(math.exp(log_probs[i, t].item() - old[i, t].item()), adv[i, 0].item()) / n
    return grad


@pytest.mark.parametrize("low,high", [(None, 4.0), (1.0, 5.0), (0.2, 0.28)])
@pytest.mark.parametrize("token_mask", [False, True])
def test_cispo_offset_convention_and_unified_mask(low, high, token_mask):
    log_probs, old, adv, mask = batch(1)
    config = LossConfig(
        epsilon_high=high, cispo_clip_convention="offset", cispo_epsilon_low=low, cispo_token_mask=token_mask
    )
    floor, ceiling = (-math.inf if low is None else 1 - low), 1 + high
    # Make each bound bind by construction, for a positive and a negative advantage (the unified mask
    # drops only one of the two): rows 0-1 get r = 2 x ceiling, rows 2-3 r = floor / 2 where a floor exists.
    adv[0:4, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=DT)
    old[0:2, 0] = log_probs[0:2, 0] - math.log(2 * ceiling)
    if floor > 0:
        old[2:4, 0] = log_probs[2:4, 0] - math.log(floor / 2)

    def token_grad(r, a):
        # MiniMax-M1 Eq. 6-7: weight clip(r, floor, ceiling) as a constant; M = 0 drops the token
        if token_mask and ((a > 0 and r > ceiling) or (a < 0 and r < floor)):
            return 0.0
        return -min(max(r, floor), ceiling) * a

    grad, out = grad_of("cispo", log_probs, old, adv, mask, config)
    torch.testing.assert_close(grad, reference_grad(log_probs, old, adv, mask, token_grad), rtol=1e-12, atol=1e-15)
    # the bounds really bind (every case): the upper one always, the lower one where it is above 0
    assert out.metrics["cispo_clip_ratio"][mask.bool().expand_as(out.metrics["cispo_clip_ratio"])].sum() > 0
    assert (out.metrics["cispo_clip_ratio/low"].sum() > 0) == (floor > 0)


def test_the_two_conventions_differ_by_one_for_the_same_number():
    """`5.0` caps at 5 in the cap convention (ms-swift, TRL) and at 6 in the offset one (NeMo, verl)."""
    log_probs = torch.tensor([[-1.0, -1.0]], dtype=DT)
    old = log_probs - torch.tensor([[math.log(5.5), math.log(100.0)]], dtype=DT)
    adv, mask = torch.ones(1, 1, dtype=DT), torch.ones(1, 2, dtype=DT)
    _, cap = grad_of("cispo", log_probs, old, adv, mask, LossConfig(epsilon_high=5.0))
    _, offset = grad_of("cispo", log_probs, old, adv, mask, LossConfig(epsilon_high=5.0, cispo_clip_convention="offset"))
    assert cap.metrics["cispo/is_weight_mean"].tolist() == [[5.0, 5.0]]
    torch.testing.assert_close(offset.metrics["cispo/is_weight_mean"], torch.tensor([[5.5, 6.0]], dtype=DT))
    assert cap.maxima["cispo/is_ratio_max"].max().item() == pytest.approx(100.0)


def test_cispo_counts_the_tokens_ppo_would_silence():
    # ratios 1.5 (A>0: PPO at 0.2 clips), 0.5 (A<0: clipped), 1.1 (inside), 0.5 with A>0 (PPO keeps it)
    log_probs = torch.full((1, 4), -1.0, dtype=DT)
    old = log_probs - torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.5]], dtype=DT))
    adv = torch.tensor([[1.0]], dtype=DT).expand(1, 4).clone()
    adv[0, 1] = -1.0
    mask = torch.ones(1, 4, dtype=DT)
    _, out = grad_of("cispo", log_probs, old, adv, mask, LossConfig(epsilon_low=0.2, epsilon_high=5.0))
    assert out.metrics["cispo/kept_where_ppo_zeroes"].tolist() == [[1.0, 1.0, 0.0, 0.0]]
    # with the unified mask and a tight band, CISPO drops them as PPO does: nothing is "kept"
    config = LossConfig(epsilon_low=0.2, epsilon_high=0.2, cispo_clip_convention="offset", cispo_epsilon_low=0.2, cispo_token_mask=True)
    grad, out = grad_of("cispo", log_probs, old, adv, mask, config)
    assert out.metrics["cispo/kept_where_ppo_zeroes"].sum() == 0
    assert grad[0, 0] == 0 and grad[0, 1] == 0 and grad[0, 2] != 0


@pytest.mark.parametrize("name", ["grpo", "dapo"])
def test_dual_clip_reference(name):
    log_probs, old, adv, mask = batch(2, spread=1.5)
    c = 3.0
    config = LossConfig(epsilon_low=0.2, epsilon_high=0.28, dual_clip_c=c)

    def objective_grad(r, a):
        """d/dlp of -obj, obj = min(rA, clip(r)A), and for A < 0 max(that, cA) (Ye et al. 2020)."""
        clipped = min(max(r, 0.8), 1.28)
        ppo = min(r * a, clipped * a)
        if a < 0 and c * a > ppo:
            return 0.0  # the floor c*A is constant
        if 0.8 <= r <= 1.28 or r * a < clipped * a:
            return -a * r
        return 0.0

    spec = get_loss(name)
    lp = log_probs.clone().requires_grad_(True)
    out = spec.fn(lp, old, adv, mask, config)
    ctx = ReductionContext(window_num_tokens=mask.sum(), max_completion_length=mask.size(1))
    REDUCTIONS[spec.reduction](out.per_token_loss, mask, ctx).backward()
    if name == "dapo":
        expected = reference_grad(log_probs, old, adv, mask, objective_grad)
    else:  # grpo: mean over sequences of each sequence's token mean
        expected = torch.zeros_like(log_probs)
        for i in range(mask.size(0)):
            n_i = mask[i].sum().item()
            for t in range(int(n_i)):
                r = math.exp(log_probs[i, t].item() - old[i, t].item())
                expected[i, t] = objective_grad(r, adv[i, 0].item()) / (mask.size(0) * n_i)
    torch.testing.assert_close(lp.grad, expected, rtol=1e-12, atol=1e-15)
    assert out.metrics["clip_ratio/dual_mean"][mask.bool()].sum() > 0  # the dual bound really bound


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token_truncate", [[1.5, 2.0, 0.5, 1.0]]),
        ("token_mask", [[1.5, 0.0, 0.5, 1.0]]),
        ("sequence_truncate", [[2.0]]),  # 1.5 * 3 * 0.5 = 2.25 -> 2
        ("sequence_mask", [[0.0]]),
    ],
)
def test_rollout_correction_modes(mode, expected):
    old = torch.zeros(1, 4, dtype=DT)
    sampler = -torch.log(torch.tensor([[1.5, 3.0, 0.5, 7.0]], dtype=DT))  # rho = 1.5, 3, 0.5, (padding)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=DT)
    weight = rollout_correction(old, sampler, mask, mode, threshold=2.0)
    torch.testing.assert_close(weight, torch.tensor(expected, dtype=DT))
    assert not weight.requires_grad


def test_rollout_correction_ignores_unscored_tokens():
    old = torch.zeros(1, 3, dtype=DT)
    sampler = torch.tensor([[float("nan"), 0.0, -math.log(1.5)]], dtype=DT)
    weight = rollout_correction(old, sampler, torch.ones(1, 3, dtype=DT), "token_truncate", 2.0)
    torch.testing.assert_close(weight, torch.tensor([[1.0, 1.0, 1.5]], dtype=DT))
