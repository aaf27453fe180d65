"""The benchmark scripts run in their quick mode and print what docs/benchmarks.md says they print.

Each test starts the script as a user would (a subprocess, one torch thread) and checks its table, its files
and the numbers that must hold whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # each test starts a benchmark script
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_bench(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", *args],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_step_time_quick_times_the_same_work_on_both_trainers():
    out = run_bench("step_time.py")
    assert "| swift_cispo.GRPOTrainer (cispo) |" in out and "| trl.GRPOTrainer (cispo) |" in out
    assert re.search(r"\| s/step \| \*\*[0-9.]+\*\*", out), out  # the ratio is reported (its value is a timing: not asserted)
    # Same seed, same model, and cap-convention cispo equals TRL's: both trainers logged the same rewards and
    # gradient norms, so the timings compare equal work.
    gap = float(re.search(r"ours vs TRL: ([0-9.e+-]+|inf)", out).group(1))
    assert gap == 0.0, out


def test_learning_curves_quick_writes_runs_table_and_png_and_resumes(tmp_path):
    out = run_bench("learning_curves.py", "--out", str(tmp_path))
    for loss in ("cispo", "dapo", "grpo"):
        for ni in (1, 4):
            assert re.search(rf"^\| {loss} \| {ni} \|", out, re.M), out
            lines = (tmp_path / f"{loss}_ni{ni}_s0.jsonl").read_text().splitlines()
            assert json.loads(lines[-1])["done"] is True
            steps = [json.loads(line)["step"] for line in lines[1:-1]]
            assert steps == list(range(1, 9))  # --quick trains 8 steps, one row each
    png = tmp_path / "learning_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # On-policy (num_iterations 1) the ratio is 1 and CISPO's gradient is DAPO's: the same rewards, step by step.
    def rewards(run: str) -> list[float]:
        rows = [json.loads(line) for line in (tmp_path / f"{run}.jsonl").read_text().splitlines()[1:-1]]
        return [row["reward"] for row in rows if "reward" in row]

    assert len(rewards("cispo_ni1_s0")) == 8 and rewards("cispo_ni1_s0") == rewards("dapo_ni1_s0")

    # A second invocation finds every run finished with the same settings and trains nothing.
    png.unlink()
    again = subprocess.run(
        [sys.executable, str(REPO / "bench" / "learning_curves.py"), "--quick", "--out", str(tmp_path)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[bench] " not in again.stderr  # the line each run it trains starts with
    assert table_lines(again.stdout) == table_lines(out) and png.exists()


def test_cli_vs_trl_quick_compares_equal_work():
    out = run_bench("cli_vs_trl.py")
    assert "| `swift rlhf` (metrics file, curves, progress bar) |" in out and "| bare `trl.GRPOTrainer` |" in out
    assert re.search(r"ratio cli / trl: median [0-9.]+", out), out  # a timing: reported, not asserted
    gap = float(re.search(r"logged rewards: ([0-9.e+-]+|inf|nan)", out).group(1))
    assert gap == 0.0, out  # the CLI and bare TRL sampled and scored the same rollouts


def test_gpu_checks_quick_runs_on_the_cpu_and_checks_what_it_times(tmp_path):
    """The GPU script's CPU check: equal work on both trainers, and the weight transport arrives bit-exact."""
    out = run_bench("gpu_checks.py", "--sections", "24", "--out", str(tmp_path))
    report = (tmp_path / "gpu_checks.md").read_text()
    assert out.count("| swift_cispo.GRPOTrainer (cispo) |") == 1 and "| trl.GRPOTrainer (cispo) |" in report
    assert "logged rewards identical on both sides: True" in report, report
    assert re.search(r"\| gloo \| [0-9.]+ GB \| [0-9.]+ \| [0-9.]+ \| True \|", report), report
    assert "| nccl | - | - | - | - | no CUDA device |" in report  # said, not invented
    assert "failed" not in report and "not run" not in report
