"""bench/smollm2_curves.py: its numbers on records whose answer is known, and the recipe it drives, end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import smollm2_curves  # noqa: E402


def _rows() -> list[dict]:
    """Eight steps, two rollouts of four: accuracy and length logged on steps 1 and 5, clipping on every step."""
    rows = []
    for step in range(1, 9):
        row = {"step": step, "loss": 0.1, "entropy": 1.0, "clip_ratio/region_mean": 0.01 * step}
        if step in (1, 5):
            first = step == 1
            row.update({"reward": 0.5, "rewards/accuracy/mean": 0.25 if first else 0.75})
            row.update({"rewards/format/mean": 0.0 if first else 0.5})
            row.update({"completions/mean_length": 80.0 if first else 20.0})
        rows.append(row)
    return rows


def test_summary_reads_rollouts_off_policy_steps_and_time():
    r = smollm2_curves.summarize(_rows(), {"train_runtime": 240.0}, threshold=0.7)
    assert (r["first"], r["last"]) == (0.25, 0.5)  # the last two rollouts: (0.25 + 0.75) / 2
    assert (r["format_first"], r["format_last"]) == (0.0, 0.25)
    assert r["reached"] == 5
    assert (r["length_first"], r["length_last"]) == (80.0, 20.0)
    # steps 2-4 and 6-8 reuse a rollout; steps 1 and 5 are on-policy and left out
    assert r["clip_ratio/region_mean"] == pytest.approx(0.01 * (2 + 3 + 4 + 6 + 7 + 8) / 6)
    assert (r["minutes"], r["seconds_per_step"]) == (4.0, 30.0)
    assert smollm2_curves.summarize(_rows(), {"train_runtime": 240.0}, threshold=0.9)["reached"] is None


def test_a_rollout_accuracy_holds_for_its_steps_and_nothing_is_shown_before_the_first():
    curve = smollm2_curves._held([(2, 0.25), (5, 0.75)], 6)
    assert curve[0] != curve[0]  # NaN before the first rollout's step
    assert curve[1:] == [0.25, 0.25, 0.25, 0.75, 0.75]


def test_table_gives_mean_and_range_over_seeds():
    runs = [smollm2_curves.summarize(_rows(), {"train_runtime": t}, threshold=0.7) for t in (240.0, 480.0)]
    opts = smollm2_curves.parse_args(["--threshold", "0.7"])
    text = smollm2_curves.table({"dapo": runs}, opts)
    row = text.splitlines()[2]
    assert row.startswith("| dapo | 2 | 0.25 | 0.50 | 5, 5 | 0.00 -> 0.25 | 80 -> 20 ")
    assert "| tokens clipped, no gradient 5.00% |" in row
    assert "| 6.0 (4.0-8.0) | 45.0 (30.0-60.0) |" in row


def test_steps_that_split_a_rollout_are_refused_in_one_sentence():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "smollm2_curves.py"), "--steps", "6"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert "--steps must be a positive multiple of 4" in result.stderr and "Traceback" not in result.stderr


SMOKE_DAPO = ("--smoke", "--losses", "dapo", "--seeds", "0")


@pytest.mark.slow
def test_smoke_runs_the_recipe_moves_an_unfinished_run_aside_and_draws_the_figure(tmp_path):
    """One loss (DAPO, the recipe's non-default branch) keeps the suite in its budget; the table tests cover both."""
    unfinished = tmp_path / "dapo-s0"  # a run stopped after one step: moved aside with its output, then rerun
    unfinished.mkdir()
    (unfinished / "logging.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (tmp_path / "dapo-s0.log").write_text("the stopped run's output\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "smollm2_curves.py"), *SMOKE_DAPO, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "dapo-s0" / "logging.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2]
    log = (tmp_path / "dapo-s0.log").read_text()
    assert f"+ {sys.executable} -m swift_cispo rlhf --rlhf_type grpo --loss_type dapo --epsilon 0.2" in log
    [aside] = tmp_path.glob("dapo-s0.unfinished-*[0-9]")
    assert (aside / "logging.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'
    assert aside.with_name(aside.name + ".log").read_text() == "the stopped run's output\n"
    table = result.stdout.splitlines()
    assert table[2].startswith("| dapo | 1 |") and len(table) == 3
    png = tmp_path / "smollm2_curves.png"
    assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second call trains nothing: the run is finished
    again = subprocess.run(
        [sys.executable, str(REPO / "bench" / "smollm2_curves.py"), *SMOKE_DAPO, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and "training" not in again.stderr
