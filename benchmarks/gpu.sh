#!/usr/bin/env bash
# The ready accelerator run (issue 18): under 8 minutes on one GPU; writes runs/bench/gpu.json.
#   bash benchmarks/gpu.sh            # full sizes (a GPU)
#   bash benchmarks/gpu.sh --quick    # CPU-sized smoke run of the same code path
# Installs the project into .venv-gpu with CUDA jax wheels when a GPU is present and no venv is active.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -d .venv-gpu ]; then
    python3 -m venv .venv-gpu
    . .venv-gpu/bin/activate
    pip install -q --upgrade pip
    if command -v nvidia-smi >/dev/null 2>&1; then
      pip install -q -e . "jax[cuda12]>=0.7,<0.13"
    else
      pip install -q -e .
    fi
  else
    . .venv-gpu/bin/activate
  fi
fi
mkdir -p runs/bench
timeout 480 python benchmarks/gpu.py --out runs/bench/gpu.json "$@"
