#!/usr/bin/env bash
# The GPU checks in one go, for a machine with CUDA (PyTorch, rich, typer, pytest installed):
#   bash tests/gpu/run_on_device.sh [OUT_DIR]
# Runs the CUDA-marked tests (core vs allocator, real OOM + snapshot, allocator model vs
# memory_reserved, gpus) and the overhead benchmark on CUDA; logs go to OUT_DIR.
set -uo pipefail
OUT=${1:-${OUT:-/tmp/oomdoctor-gpu}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD COLUMNS=100
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } 2>&1 | tee "$OUT/env.txt"
timeout 300 python3 -m pytest -q -m cuda tests/gpu -s -p no:cacheprovider -p no:oomdoctor 2>&1 | tee "$OUT/gpu-tests.txt"
timeout 120 python3 benchmarks/overhead.py --device cuda --steps 200 --rounds 2 2>&1 | grep -v USDT | tee "$OUT/overhead-cuda.txt"
