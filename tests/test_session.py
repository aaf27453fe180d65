"""What every test may rely on, checked after the other modules have been collected (and most have run)."""

from __future__ import annotations

import torch
from safetensors import safe_open


def test_default_dtype_is_float32():
    """No module changes torch's default dtype for the whole session (test_losses.py uses float64 for its own tests only)."""
    assert torch.get_default_dtype() == torch.float32
    assert torch.zeros(1).dtype == torch.float32


def test_tiny_model_is_saved_in_float32(tiny_model_dir):
    """The model every CLI test trains is float32, as in production, whichever files the run collects."""
    with safe_open(str(tiny_model_dir / "model.safetensors"), framework="pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"F32"}
