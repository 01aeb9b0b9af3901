#!/usr/bin/env bash
# Everything a session with a GPU should check and measure, as one command that fits a
# 10-minute slot (issue 24; docs/performance.md, "GPU benchmark, prepared"):
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# 1. the CUDA-only tests, which skip on a CPU machine (host-sync counter, non-blocking
#    upload, fp16 loss scaling) and the files around them   -> OUTDIR/pytest.log (~1 min)
# 2. benchmarks/gpu.sh: drslora / lora / finetune / zscl x fp32 / bf16 / fp16 on a
#    random-weight ViT-B/16                                  -> OUTDIR/gpu-*.json, gpu.log
#
# Each step has its own time limit (PYTEST_TIMEOUT, GPU_BENCH_TIMEOUT seconds), so a hang in
# one still leaves the other's output. Needs cl-bench importable (`pip install -e .`, or the
# repo root on PYTHONPATH with the dependencies installed) and no network. Exit status: 2
# without a CUDA device, else the first failing step's.
set -uo pipefail
out="${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
py="${PYTHON:-python}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"  # absolute: the steps run from the repo root
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible to torch; run this on a GPU machine (CPU: bash benchmarks/gpu.sh --smoke --out DIR)" >&2
  exit 2
fi
{
  "$py" -c "import torch; print('device', torch.cuda.get_device_name(0)); print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
} | tee "$out/device.txt"

status=0
step() {  # NAME LOG SECONDS CMD...: run CMD in the repo under a time limit, log it, keep the first failure
  local name="$1" log="$2" limit="$3" start rc
  shift 3
  start=$(date +%s)
  (cd "$repo" && timeout "$limit" "$@") 2>&1 | tee "$out/$log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
  echo "$name: rc $rc, $(( $(date +%s) - start )) s" | tee -a "$out/device.txt"
}
step pytest pytest.log "${PYTEST_TIMEOUT:-180}" "$py" -m pytest -q -rs -p no:cacheprovider \
  tests/test_bench.py tests/test_trainer.py tests/test_backbone.py
step gpu.sh gpu.log "${GPU_BENCH_TIMEOUT:-480}" bash "$here/gpu.sh" --out "$out"
exit "$status"
