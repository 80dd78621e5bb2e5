#!/usr/bin/env bash
# Create .venv and install the project into it (idempotent). On a machine without a GPU,
# torch==2.13.0 (a CPU build) goes in first so that nothing pulls a multi-GB CUDA build;
# ONNX Runtime comes from the `cpu` extra, or `gpu` where nvidia-smi finds a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  extra=gpu
  python -m pip install -q torch
else
  extra=cpu
  python -m pip install -q torch==2.13.0
fi
python -m pip install -q -e ".[$extra,test]"
