"""The TRL / transformers internals the package relies on are where it expects them (about a second)."""

from __future__ import annotations

import inspect

import pytest

from swift_cispo import trl_contract


def test_installed_trl_and_transformers_keep_the_contract():
    breaks = trl_contract.contract_breaks()
    assert breaks == [], "TRL or transformers moved what swift-cispo relies on:\n" + "\n".join(breaks)


def test_the_contract_notices_a_changed_signature(monkeypatch):
    import trl.trainer.utils as trl_utils

    def split_tensor_dict(tensor_dict, num_chunks, shuffle):  # a parameter TRL might add
        return []

    monkeypatch.setattr(trl_utils, "split_tensor_dict", split_tensor_dict)
    breaks = trl_contract.contract_breaks()
    assert any(b.startswith("trl.trainer.utils:split_tensor_dict: parameters are") for b in breaks), breaks


def test_the_contract_notices_a_changed_fork_and_a_lost_hook(monkeypatch):
    from transformers import Trainer
    from trl.generation.vllm_generation import VLLMGeneration

    def _init_vllm(self):  # not TRL's code any more
        return None

    def training_step(self, model, inputs, num_items_in_batch=None):
        return inputs  # never calls _prepare_inputs

    monkeypatch.setattr(VLLMGeneration, "_init_vllm", _init_vllm)
    monkeypatch.setattr(Trainer, "training_step", training_step)
    breaks = trl_contract.contract_breaks()
    assert any("VLLMGeneration._init_vllm: its source changed" in b for b in breaks), breaks
    assert any("Trainer.training_step: no longer contains 'self._prepare_inputs('" in b for b in breaks), breaks


def test_version_outside_the_tested_range_is_one_sentence(monkeypatch):
    assert trl_contract.trl_version_problem() is None  # the installed TRL is the tested one
    monkeypatch.setattr(trl_contract.metadata, "version", lambda name: "1.17.0")
    problem = trl_contract.trl_version_problem()
    assert problem.startswith("TRL 1.17.0 is installed, but swift-cispo is tested with TRL >= 1.16, < 1.17")
    assert "\n" not in problem


def test_setup_py_pins_the_tested_range():
    from pathlib import Path

    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    (lo_major, lo_minor), (hi_major, hi_minor) = trl_contract.TESTED_TRL
    assert f'"trl>={lo_major}.{lo_minor},<{hi_major}.{hi_minor}"' in setup


def test_vllm_backend_arguments_match_trl_signature():
    """trl_backend_kwargs passes exactly VLLMGeneration's parameters (no default taken silently)."""
    from trl.generation.vllm_generation import VLLMGeneration

    parameters = set(inspect.signature(VLLMGeneration.__init__).parameters) - {"self"}
    assert parameters == set(trl_contract.SIGNATURES["trl.generation.vllm_generation:VLLMGeneration.__init__"]) - {"self"}


def test_multimodal_inputs_come_from_trl_signature():
    from swift_cispo.trainers import grpo_trainer

    assert "pixel_values" in grpo_trainer._MULTIMODAL_KEYS and "image_position_ids" in grpo_trainer._MULTIMODAL_KEYS
    assert not {"model", "input_ids", "batch_size"} & set(grpo_trainer._MULTIMODAL_KEYS)
