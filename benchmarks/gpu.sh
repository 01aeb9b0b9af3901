#!/usr/bin/env bash
# GPU benchmark of cl-bench's learners on a random-weight ViT-B/16 (no network needed).
#   bash benchmarks/gpu.sh                 # one GPU, <= 8 minutes; JSON -> results/benchmarks/
#   bash benchmarks/gpu.sh --smoke --out D # tiny model, 2 steps, CPU, seconds
# Options: see `python benchmarks/gpu_bench.py --help`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${PYTHON:-python}" "$here/gpu_bench.py" "$@"
