"""A model folder that cannot load as a causal LM with its tokenizer is named in one sentence, before any weights load."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import assert_clean_error
from swift_cispo.cli.model import model_folder_problem


@pytest.fixture
def copy_of(tiny_model_dir, tmp_path):
    def make(name="m"):
        folder = tmp_path / name
        shutil.copytree(tiny_model_dir, folder)
        return folder

    return make


def test_the_tiny_model_is_a_model(tiny_model_dir):
    assert model_folder_problem(tiny_model_dir) is None


def test_each_broken_folder_is_named(copy_of):
    cases = []
    folder = copy_of("no_tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    cases.append((folder, "has no tokenizer"))
    folder = copy_of("no_config")
    (folder / "config.json").unlink()
    cases.append((folder, "has no config.json"))
    folder = copy_of("bad_header")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    cases.append((folder, "has unreadable weights: model.safetensors is truncated or not a safetensors file"))
    folder = copy_of("no_weights")
    (folder / "model.safetensors").unlink()
    cases.append((folder, "has no weights (model.safetensors or pytorch_model.bin)"))
    folder = copy_of("classifier")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2ForSequenceClassification"]}))
    cases.append((folder, "holds a Qwen2ForSequenceClassification, not a causal language model (Qwen2ForCausalLM)"))
    folder = copy_of("remote")
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "my_arch", "auto_map": {"AutoModelForCausalLM": "m.MyLM"}}))
    cases.append((folder, "ships its own model code (auto_map in config.json); add --trust_remote_code true"))
    folder = copy_of("unknown")
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "my_arch"}))
    cases.append((folder, "has model_type 'my_arch', which this transformers does not know"))
    folder = copy_of("adapter")
    (folder / "config.json").unlink()
    (folder / "adapter_config.json").write_text("{}")
    cases.append((folder, "holds a LoRA adapter, not a model; merge it first"))
    for folder, fragment in cases:
        problem = model_folder_problem(folder)
        assert problem is not None and fragment in problem, (folder.name, problem)


@pytest.mark.slow
def test_the_cli_refuses_a_folder_without_tokenizer_before_loading(copy_of, tmp_path, data_file):
    from helpers import swift

    folder = copy_of("no_tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    result = swift("rlhf", "--model", folder, "--dataset", data_file, "--reward_funcs", "exact_match",
                   "--output_dir", tmp_path / "o", cwd=tmp_path)  # fmt: skip
    assert_clean_error(result, f"model folder {folder} has no tokenizer")
    assert not (tmp_path / "o").exists()
