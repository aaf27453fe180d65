"""Reward models from the command line: a sequence classifier and a generative judge, through ms-swift's plugins.

Each run writes completions.jsonl with every reward's raw value; the test recomputes the reward model's
score of each (prompt, completion) itself, from the model and its chat template, and compares.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import REPO, assert_clean_error, swift, swift_in_process

DEMO_MODEL = REPO / "swift_cispo" / "demo" / "model"
RUN = ["--max_steps", "1", "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "6",
       "--log_completions", "true", "--logging_steps", "1", "--save_strategy", "no"]  # fmt: skip


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A randomly initialised Qwen2 sequence classifier (1 label) with the demo's tokenizer."""
    from transformers import Qwen2ForSequenceClassification

    from swift_cispo.demo.tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    config = build_model(tokenizer).config
    config.num_labels = 1
    torch.manual_seed(1)
    model = Qwen2ForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("rm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_sequence_classifier_scores_each_conversation_with_its_first_logit(classifier, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "out"
    result = swift("rlhf", *RUN, "--reward_funcs", "exact_match", "--reward_model", classifier, "--reward_weights", "1", "0.5",
                   "--output_dir", out, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(out)
    name = classifier.name
    assert rows and all(set(row["rewards"]) == {"exact_match", name} for row in rows)
    model = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    tokenizer = AutoTokenizer.from_pretrained(classifier)
    for row in rows[:4]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}], tokenize=False)
        with torch.no_grad():
            expected = model(**tokenizer([text], return_tensors="pt")).logits[0, 0].item()
        assert row["rewards"][name] == pytest.approx(expected, abs=1e-5)
    metrics = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
    assert f"rewards/{name}/mean" in metrics[0]


JUDGE_PLUGIN = """\
from swift.rewards import GenRMPlugin, rm_plugins

class DigitJudge(GenRMPlugin):
    '''Asks the judge (the demo adder) "<reply digits>+1=" and scores the digits of its answer.'''
    max_tokens = 4

    def prepare_rm_inputs(self, inputs):
        digits = ["".join(ch for ch in row["messages"][-1]["content"] if ch.isdigit())[:2] or "0" for row in inputs]
        return [{"messages": [{"role": "user", "content": f"{d}+1="}]} for d in digits]

    def compute_rewards(self, results):
        texts = [response.choices[0].message.content for response in results]
        return [sum(ch.isdigit() for ch in text) / 4 for text in texts]

rm_plugins['digit_judge'] = DigitJudge
"""


@pytest.mark.slow
def test_a_generative_judge_plugin_generates_its_verdicts(tmp_path):
    """ms-swift's GenRMPlugin interface: the judge (here the demo model) generates, greedily, for every completion."""
    plugin = tmp_path / "judge.py"
    plugin.write_text(JUDGE_PLUGIN)
    out = tmp_path / "out"
    result = swift("rlhf", *RUN, "--external_plugins", plugin, "--reward_model", DEMO_MODEL, "--reward_model_plugin", "digit_judge",
                   "--output_dir", out, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(out)
    scores = [row["rewards"]["model"] for row in rows]
    assert all(score in (0.0, 0.25, 0.5, 0.75, 1.0) for score in scores) and max(scores) > 0, scores


def test_bad_reward_model_flags_end_in_one_sentence(tmp_path, capsys, classifier):
    assert_clean_error(swift_in_process("rlhf", "--reward_model", tmp_path / "missing", "--output_dir", tmp_path / "o", capsys=capsys),
                       "does not exist")  # fmt: skip
    assert_clean_error(swift_in_process("rlhf", "--reward_model", classifier, "--reward_model_plugin", "nope", "--output_dir", tmp_path / "o", capsys=capsys),
                       "unknown reward-model plugin 'nope'; registered: default, genrm")  # fmt: skip
    assert_clean_error(
        swift_in_process("rlhf", "--reward_model", classifier, "--reward_model_plugin", "default", "genrm", "--output_dir", tmp_path / "o", capsys=capsys),
        "--reward_model_plugin names 2 plugins for 1 --reward_model",
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_causal_lm_with_the_default_plugin_is_refused_before_training(tmp_path):
    result = swift("rlhf", *RUN, "--reward_model", DEMO_MODEL, "--output_dir", tmp_path / "o", cwd=tmp_path)
    assert_clean_error(result, "is not a sequence-classification model", "--reward_model_plugin genrm")
