"""bench/real_model_throughput.py's split of a step's time into phases, on a record whose answer is known."""

from __future__ import annotations

import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import real_model_throughput  # noqa: E402


def test_phases_add_up_to_the_step_and_a_sync_inside_generation_is_not_counted_twice():
    # trainer built at 0; step 1 (not timed) ends at 10; steps 2 and 3 end at 30 and 50
    record = {
        "steps": [0.0, 10.0, 30.0, 50.0],
        "intervals": [
            ("rollout", 0.0, 4.0), ("generation", 0.5, 3.5),  # step 1: outside the timed window
            ("rollout", 10.0, 18.0), ("generation", 10.0, 16.0), ("weight_sync", 10.0, 11.0), ("old_logprob_pass", 16.0, 17.0),
            ("rollout", 30.0, 37.0), ("generation", 30.0, 35.0), ("weight_sync", 30.0, 31.0),
            ("weight_sync", 49.0, 50.0),  # a push outside any generation call (async pushes before it prefetches)
        ],
        "tokens": [(100, 50, 10), (120, 60, 12), (140, 80, 16)],
    }  # fmt: skip
    r = real_model_throughput.step_breakdown(record)
    assert r["step"] == pytest.approx(20.0)
    assert r["generation"] == pytest.approx((5 + 4) / 2)  # 6 s and 5 s of generation calls, 1 s of each a weight push
    assert r["weight_sync"] == pytest.approx(3 / 2)
    assert r["old_logprob_pass"] == pytest.approx(0.5)
    assert r["other_scoring"] == pytest.approx((1 + 2) / 2)  # rollout time neither generating nor in the old pass
    assert r["training"] == pytest.approx(20 - 4.5 - 1.5 - 0.5 - 1.5)
    assert sum(r[p] for p in real_model_throughput.PHASES) == pytest.approx(r["step"])
    assert (r["prompt_tokens"], r["completion_tokens"], r["longest"]) == (130, 70, 14)  # the first rollout is not timed
