#!/usr/bin/env bash
# Re-create the committed toy leaderboards: the runs (idempotent sweeps) and the tables.
# Each X-TAIL run is ~200 CPU-seconds; the full grid is hours on a 2-core CPU.
#   bash benchmarks/toy_leaderboards.sh --runs [GROUP]   GROUP: core (default) | new | diagnostics | all
set -euo pipefail
cd "$(dirname "$0")/.."
CORE_XTAIL="zeroshot,finetune,drslora,lora,gated_lora,lwf,zscl,wiseft,resora,clip_ast"
CORE_MTIL="zeroshot,finetune,drslora,lora"
# the rest of the papers' tables (issue 22) and the upper bounds
NEW="rail_primal,rail_dual,joint,individual,icarl,lwf_vr,moe_adapters"
sweep() {  # setting learners out [extra args]
  clbench sweep --setting "$1" --learners "$2" --seeds 0,1,2 --jobs 2 --threads 1 --device cpu --out "$3" "${@:4}"
}
if [ "${1:-}" = "--runs" ]; then
  group="${2:-core}"
  if [ "$group" = core ] || [ "$group" = all ]; then
    sweep xtail "$CORE_XTAIL" results/toy/xtail/runs
    sweep mtil "$CORE_MTIL" results/toy/mtil/runs
  fi
  if [ "$group" = new ] || [ "$group" = all ]; then
    sweep xtail "$NEW" results/toy/xtail/runs
    sweep mtil "$NEW" results/toy/mtil/runs
  fi
  if [ "$group" = diagnostics ] || [ "$group" = all ]; then
    # ZSCL's reference data: a fixed pool (default) vs a fresh stream every step (docs/learners.md)
    sweep xtail zscl results/toy/xtail/diagnostics/zscl-stream --set reference=stream
  fi
fi
for setting in xtail mtil; do
  clbench leaderboard "results/toy/$setting/runs" --metric all --out "results/toy/$setting/leaderboard.md"
  clbench leaderboard "results/toy/$setting/runs" --per-dataset --metric all --out "results/toy/$setting/leaderboard-per-dataset.md"
done
if [ -d results/toy/xtail/diagnostics/zscl-stream ]; then
  clbench leaderboard results/toy/xtail/runs/toy-xtail-zscl-seed* results/toy/xtail/diagnostics/zscl-stream --metric all --out results/toy/xtail/diagnostics/leaderboard.md
fi
