"""The advantage estimators against their definitions, written out per completion (float64)."""

import math

import pytest
import torch

from swift_cispo.rewards.advantages import SCALE_EPSILON, estimate_advantages, sequence_kl

REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.0, 2.0, 2.0, 1.0, 3.0], dtype=torch.float64)  # two groups of 4


@pytest.fixture(autouse=True)
def _float64():
    """Float64 references, for these tests only (conftest.py puts the session's float32 back after each test)."""
    torch.set_default_dtype(torch.float64)
    yield
K = 4


def _std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))  # unbiased, as torch.std


def test_rloo_baseline_is_the_mean_of_the_other_rewards():
    got = estimate_advantages(REWARDS, K, "rloo", "none")
    r = REWARDS.tolist()
    for i in range(len(r)):
        group = r[(i // K) * K : (i // K + 1) * K]
        others = (sum(group) - r[i]) / (K - 1)
        assert got[i].item() == pytest.approx(r[i] - others, rel=1e-12, abs=1e-12)


def test_grpo_group_scaling_matches_trl_definition():
    got = estimate_advantages(REWARDS, K, "grpo", "group")
    r = REWARDS.tolist()
    for i in range(len(r)):
        group = r[(i // K) * K : (i // K + 1) * K]
        expected = (r[i] - sum(group) / K) / (_std(group) + SCALE_EPSILON)
        assert got[i].item() == pytest.approx(expected, rel=1e-12)


def test_reinforce_plus_plus_scales_by_the_batch_std_of_the_advantages():
    got = estimate_advantages(REWARDS, K, "reinforce_plus_plus", "batch")
    r = REWARDS.tolist()
    centred = [r[i] - sum(r[(i // K) * K : (i // K + 1) * K]) / K for i in range(len(r))]
    for i in range(len(r)):
        assert got[i].item() == pytest.approx(centred[i] / (_std(centred) + SCALE_EPSILON), rel=1e-12)
    # not the raw rewards' spread, which grpo's batch scaling uses
    assert not torch.allclose(got, estimate_advantages(REWARDS, K, "grpo", "batch"))


def test_group_of_equal_rewards_has_zero_advantage_for_every_estimator():
    flat = torch.full((4,), 0.7)
    for estimator in ("grpo", "rloo", "reinforce_plus_plus"):
        assert torch.count_nonzero(estimate_advantages(flat, 4, estimator, "group")) == 0


def test_unknown_estimator_and_ragged_groups_are_refused():
    with pytest.raises(ValueError, match="advantage_estimator must be one of grpo, rloo, reinforce_plus_plus"):
        estimate_advantages(REWARDS, K, "ppo")
    with pytest.raises(ValueError, match="do not form groups of 3"):
        estimate_advantages(REWARDS, 3)


def test_sequence_kl_sums_only_completion_tokens():
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert sequence_kl(old, ref, mask).item() == pytest.approx(0.5 - 1.0)
