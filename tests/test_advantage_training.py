"""--advantage_estimator through a real (tiny) training run: the advantages written for the rollout are ms-swift's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("beta", ["0.0", "0.04"])
def test_rloo_advantages_are_leave_one_out_in_a_training_run(beta, tmp_path, tiny_model_dir):
    """beta 0: the advantages are exactly leave-one-out; beta 0.04: ms-swift's rloo default kl_in_reward true trains."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+{i}="}) + "\n" for i in range(8)))
    plugin = tmp_path / "length_reward.py"
    plugin.write_text(
        "from swift_cispo.rewards import ORM, orms\n\n"
        "class Length(ORM):\n"
        "    def __call__(self, completions, **kwargs):\n"
        "        return [float(len(c)) for c in completions]  # varies within a group, so advantages are not all 0\n\n"
        "orms['length'] = Length\n"
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for name in ("NPROC_PER_NODE", "NNODES", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "swift_cispo", "rlhf", "--model", str(tiny_model_dir), "--dataset", str(data),
         "--external_plugins", str(plugin), "--reward_funcs", "length", "--advantage_estimator", "rloo",
         "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "6",
         "--temperature", "1.0", "--max_steps", "1", "--beta", beta, "--log_completions", "true", "--output_dir", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    if beta != "0.0":  # the KL moved into the reward: advantages are no longer the rewards' alone, the KL is still logged
        assert any("kl" in json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines())
        return
    checked = 0
    for start in range(0, 8, 4):  # groups of 4 consecutive completions of one prompt
        group = rows[start : start + 4]
        assert len({r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"]) for r in group}) == 1
        rewards = [r["rewards"]["length"] for r in group]
        for row, reward in zip(group, rewards):
            others = (sum(rewards) - reward) / 3  # leave-one-out baseline; scale_rewards none (ms-swift's rloo default)
            assert row["advantage"] == pytest.approx(reward - others, rel=1e-5, abs=1e-5)
            checked += row["advantage"] != 0
    assert checked > 0
