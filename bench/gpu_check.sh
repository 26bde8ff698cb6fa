#!/usr/bin/env bash
# The GPU check (issue 38), for the first machine with a GPU: install, the GPU-marked tests, then
# the recipe on a generated corpus on cuda and on cpu (same steps per run, so the ms/step and
# clips/s columns compare), each printed as a table. Budget: 8 minutes on one GPU + 16 cores.
#   bash bench/gpu_check.sh                # on the GPU machine
#   bash bench/gpu_check.sh --device cpu   # the CPU-only rehearsal (what the slow test runs)
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
if [ "${1:-}" = "--device" ]; then DEVICE=${2:?--device needs cpu or cuda}; fi
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
start=$(date +%s)
make --no-print-directory install >/dev/null || { echo "make install failed"; exit 1; }
PY=.venv/bin/python
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
rc=0
if [ "$DEVICE" = cuda ]; then
  $PY -m pytest -q -m gpu tests/ || rc=1
  $PY bench/gpu_check.py --device cuda --json /tmp/gpu_check_cuda.json || rc=1
  # the same steps on the CPU cores (fewer optimizer steps: the rates are per step; the full-size
  # SVD step is GPU-only)
  $PY bench/gpu_check.py --device cpu --steps 6 --skip "train gfdm svd" --json /tmp/gpu_check_cpu.json || rc=1
else
  $PY bench/gpu_check.py --device cpu --quick || rc=1
fi
echo "gpu_check: $(( $(date +%s) - start )) s in all, exit $rc"
exit $rc
