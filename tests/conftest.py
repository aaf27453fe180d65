"""Shared fixtures: a tiny random model of the demo's shape (built locally, no hub), data and plugin files.

Helpers that are not fixtures (``swift()``, ``FAST``, ``read_metrics``...) live in tests/helpers.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SESSION_DTYPE = torch.get_default_dtype()


@pytest.fixture(autouse=True)
def _default_dtype_is_restored():
    """A test may change torch's default dtype for itself; the next test starts from the session's again."""
    yield
    torch.set_default_dtype(SESSION_DTYPE)


@pytest.fixture(autouse=True)
def _plugin_registries_are_restored():
    """A test that loads a plugin file (or registers a reward, scheduler, environment) leaves the registries as
    they were for the next test."""
    from swift_cispo.rewards import orms, rm_plugins
    from swift_cispo.rollout import context_managers, envs, multi_turns

    registries = (orms, rm_plugins, multi_turns, envs, context_managers)
    saved = [dict(registry) for registry in registries]
    yield
    for registry, entries in zip(registries, saved):
        registry.clear()
        registry.update(entries)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained 2-layer Qwen2 with the demo's tokenizer (float32), so tests do not depend on the demo weights."""
    from swift_cispo.demo.tiny import save_random_model

    return save_random_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture
def python_exe() -> str:
    return sys.executable


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def plugin_file(tmp_path) -> Path:
    path = tmp_path / "my_plugin.py"
    path.write_text(
        "from swift_cispo.rewards import ORM, orms\n"
        "\n"
        "class ShortAnswer(ORM):\n"
        "    def __call__(self, completions, answer, **kwargs):\n"
        "        # dataset columns arrive as keyword arguments, one value per completion\n"
        "        assert len(answer) == len(completions)\n"
        "        return [1.0 / (1 + len(c)) for c in completions]\n"
        "\n"
        "orms['short_answer'] = ShortAnswer\n"
    )
    return path
