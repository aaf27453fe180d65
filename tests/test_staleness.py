"""Bounded staleness (--max_staleness K): which rollouts are asked for ahead, when one is too old, the flags.

The runs with the real engine (colocate and a `swift rollout` server, lags 0..K then K) are in
tests/test_vllm.py; these check the schedule and the queue without one.
"""

from __future__ import annotations

import pytest

from helpers import grpo_config, swift_in_process
from swift_cispo.generation.backends import ColocateGeneration, is_stale
from swift_cispo.trainers.rollout_window import micro_steps_to_prefetch


def due(step: int, asked_until: int = 0, *, k: int, ga: int = 1, every: int = 1, total: int = 100) -> list[int]:
    return micro_steps_to_prefetch(
        next_micro_step=(step + 1) * ga, asked_until=asked_until, optimizer_step=step, max_staleness=k,
        gradient_accumulation_steps=ga, generate_every=every, total_micro_steps=total,
    )  # fmt: skip


def test_lag_one_asks_for_the_next_step_only():
    assert due(0, k=1) == [1]
    assert due(5, asked_until=6, k=1) == [6]


def test_staleness_k_fills_the_next_k_steps_then_one_per_step():
    assert due(0, k=3) == [1, 2, 3]  # the first step asks for three
    assert due(1, asked_until=4, k=3) == [4]  # then the one K steps ahead
    assert due(1, asked_until=5, k=3) == []  # nothing twice


def test_generations_spanning_several_steps_are_asked_for_at_their_first_step_minus_k():
    # steps_per_generation 1, num_iterations 2: a generation every 2 micro-steps, gradient accumulation 1
    assert due(0, k=1, every=2) == []  # step 1 reuses step 0's rollout (its second pass)
    assert due(1, k=1, every=2) == [2]
    assert due(1, k=4, every=2) == [2, 4]
    # gradient accumulation 2, one generation per micro-step: two rollouts per optimizer step
    assert due(0, k=2, ga=2) == [2, 3, 4, 5]


def test_nothing_is_asked_for_past_the_last_step():
    assert due(8, asked_until=9, k=4, total=10) == [9]
    assert due(9, asked_until=10, k=4, total=10) == []


def test_a_rollout_older_than_k_steps_is_stale():
    assert not is_stale(version=3, step=5, max_staleness=2)
    assert is_stale(version=2, step=5, max_staleness=2)
    assert is_stale(version=4, step=5, max_staleness=0)


def _colocate(max_staleness: int, step: list[int]) -> ColocateGeneration:
    """The real backend's bookkeeping with the engine calls replaced by a counter (no vLLM here)."""
    backend = object.__new__(ColocateGeneration)
    backend._init_queue(lambda: step[0], max_staleness)
    backend.weights_version, backend._llm_weights_sleeping = -1, False

    class One:
        num_processes = 1

    backend.accelerator = One()
    backend.fresh = 0

    def sync_weights():
        backend.weights_version = step[0]

    def generate_now(prompts, images, n, profiler=None):
        backend.fresh += 1
        return ("prompt_ids", [[7]] * len(prompts) * n, None, None)

    backend.sync_weights, backend._generate_now = sync_weights, generate_now
    return backend


def test_the_queue_hands_out_rollouts_in_order_and_regenerates_a_stale_one():
    step = [0]
    backend = _colocate(2, step)
    backend.prefetch([[1]], 4)
    backend.prefetch([[2]], 4)
    assert [p.version for p in backend.pending] == [0, 0] and backend.fresh == 2
    step[0] = 2
    backend.generate([[1]], None, 4)  # two steps old: within K
    assert backend.last_rollout_version == 0 and backend.fresh == 2 and backend.take_dropped() == 0
    backend.generate([[9]], None, 4)  # other prompts (an evaluation): generated now, the queue is kept
    assert backend.fresh == 3 and len(backend.pending) == 1 and backend.last_rollout_version == 2
    step[0] = 3
    backend.generate([[2]], None, 4)  # three steps old: dropped, generated again from step 3's weights
    assert backend.fresh == 4 and backend.last_rollout_version == 3 and backend.take_dropped() == 4
    assert backend.take_dropped() == 0 and not backend.pending


def test_async_generate_is_staleness_one(tmp_path):
    config = grpo_config(tmp_path, async_generate=True, use_vllm=True, vllm_mode="server")
    assert config.max_staleness == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(max_staleness=2), "max_staleness asks a vLLM engine for rollouts ahead: add --use_vllm true"),
        (dict(max_staleness=-1), "max_staleness must be a whole number in [0, 64]"),
        (dict(max_staleness=65, use_vllm=True, vllm_mode="server"), "max_staleness must be a whole number in [0, 64]"),
        (dict(max_staleness=2, use_vllm=True, vllm_mode="server", dynamic_sample=True),
         "cannot be combined with async_generate or max_staleness"),
    ],
)  # fmt: skip
def test_bad_staleness_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        grpo_config(tmp_path, **overrides)


def test_the_cli_checks_the_range_before_loading(capsys):
    result = swift_in_process("rlhf", "--max_staleness", "100", capsys=capsys)
    assert result.returncode == 2
    assert "--max_staleness" in result.stderr and "in [0, 64]" in result.stderr
