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
# vLLM on the CPU reserves --vllm_gpu_memory_utilization of the machine's memory for its KV cache (0.3 of 24 GiB is
# 7 GiB per engine, zero-filled at start). The tests' models need a few MiB; 1 GiB lets two test workers, each
# with a two-process colocate run, share the machine. Engines started by the tests inherit it.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the cores: one OpenMP thread per process (the tests and the processes they start), so
    # that idle threads do not spin against the other worker's (torchrun already does this for its workers).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

SESSION_DTYPE = torch.get_default_dtype()
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (scripts/test.sh), each worker's collection is the queue of whole files it draws from:
    files with a ``heavy`` test (minutes on its own) go first, then those with the most slow tests, so that a
    long file does not start last and keep one worker busy while the other is idle (measured: the demo's
    3.5-minute README run, started last, left a worker idle for that long). A plain pytest run keeps the order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    weight: dict[str, tuple[int, int]] = {}
    for item in items:
        heavy, slow = weight.get(item.module.__name__, (0, 0))
        weight[item.module.__name__] = (heavy + (item.get_closest_marker("heavy") is not None),
                                        slow + (item.get_closest_marker("slow") is not None))  # fmt: skip
    items.sort(key=lambda item: tuple(-count for count in weight[item.module.__name__]))  # stable within a file


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
