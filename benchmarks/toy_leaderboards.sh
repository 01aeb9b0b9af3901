#!/usr/bin/env bash
# Re-create the committed toy leaderboards: the runs (idempotent sweeps) and the tables.
# Each X-TAIL run is ~200 CPU-seconds; the full grid is hours on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
LEARNERS_XTAIL="zeroshot,finetune,drslora,lora,gated_lora,lwf,zscl,wiseft,resora,clip_ast"
LEARNERS_MTIL="zeroshot,finetune,drslora,lora"
if [ "${1:-}" = "--runs" ]; then
  clbench sweep --setting xtail --learners "$LEARNERS_XTAIL" --seeds 0,1,2 --jobs 2 --threads 1 --out results/toy/xtail/runs
  clbench sweep --setting mtil --learners "$LEARNERS_MTIL" --seeds 0,1,2 --jobs 2 --threads 1 --out results/toy/mtil/runs
  # issue 15 diagnostics (not defaults): drslora with one factor changed, docs/learners.md
  for variant in "kappa0 kappa_max=0" "official kappa_schedule=official" "lr3e-3 lr=3.125e-3" "reference1000 reference_iterations=1000"; do
    set -- $variant
    clbench sweep --setting mtil --learners drslora --seeds 0,1,2 --set "$2" --jobs 2 --threads 1 --out "results/toy/mtil/diagnostics/drslora-$1"
  done
fi
for setting in xtail mtil; do
  clbench leaderboard "results/toy/$setting/runs" --metric all --out "results/toy/$setting/leaderboard.md"
  clbench leaderboard "results/toy/$setting/runs" --per-dataset --metric all --out "results/toy/$setting/leaderboard-per-dataset.md"
done
clbench leaderboard results/toy/mtil/diagnostics --metric all --out results/toy/mtil/diagnostics/leaderboard.md
