#!/usr/bin/env bash
# Re-create the committed toy leaderboards: the runs (idempotent sweeps) and the tables.
# Each X-TAIL run is ~200 CPU-seconds; the full grid is hours on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
LEARNERS_XTAIL="zeroshot,finetune,drslora,lora,gated_lora,lwf,zscl,wiseft,resora,clip_ast"
LEARNERS_MTIL="zeroshot,finetune,drslora"
if [ "${1:-}" = "--runs" ]; then
  clbench sweep --setting xtail --learners "$LEARNERS_XTAIL" --seeds 0,1,2 --jobs 2 --threads 1 --out results/toy/xtail/runs
  clbench sweep --setting mtil --learners "$LEARNERS_MTIL" --seeds 0,1,2 --jobs 2 --threads 1 --out results/toy/mtil/runs
fi
for setting in xtail mtil; do
  clbench leaderboard "results/toy/$setting/runs" --metric all --out "results/toy/$setting/leaderboard.md"
  clbench leaderboard "results/toy/$setting/runs" --per-dataset --metric all --out "results/toy/$setting/leaderboard-per-dataset.md"
done
