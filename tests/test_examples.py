"""The example scripts run in their smoke mode (the embedded demo model, a few steps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_custom_reward_example_smoke(tmp_path):
    out = tmp_path / "example_run"
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "SMOKE": "1",
        "OUTPUT_DIR": str(out),
        "SWIFT": f"{sys.executable} -m swift_cispo",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        ["bash", str(REPO / "examples/scripts/cispo_custom_reward.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert all("rewards/answer_match/mean" in m for m in metrics if "reward" in m)
