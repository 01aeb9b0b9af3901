#!/usr/bin/env bash
# Paired wall time of one whole toy stream at two commits, and whether their results are
# bit-identical (issue 24: "before/after wall time of clbench run --setting xtail --learner
# drslora, idle, paired"). Runs A B A B ... from two git worktrees with the same command, so
# the machine's load drifts over both alike; prints each run's wall time, the median ratio
# B / A, and the sha256 of each run's accuracy / summary / domains table (values as CSV).
#
#   bash benchmarks/paired_stream.sh BEFORE AFTER [PAIRS] [LEARNER] [SETTING]
#   e.g. bash benchmarks/paired_stream.sh 9b5c842~1 9b5c842 3 drslora xtail
#
# EXTRA="--max-tasks 1 --eval-limit 32" adds run options (a quick check of the script).
# Needs an idle machine for absolute times (the ratio is robust to steady load). The
# worktrees and runs go to a temporary folder, removed at the end.
set -euo pipefail
before="${1:?BEFORE commit}"; after="${2:?AFTER commit}"
pairs="${3:-3}"; learner="${4:-drslora}"; setting="${5:-xtail}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'git -C "$repo" worktree remove --force "$tmp/a" >/dev/null 2>&1 || true;
      git -C "$repo" worktree remove --force "$tmp/b" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git -C "$repo" worktree add --detach "$tmp/a" "$before" >/dev/null
git -C "$repo" worktree add --detach "$tmp/b" "$after" >/dev/null
threads="$(nproc)"
run() {  # side pair
  local wt="$tmp/$1" out="$tmp/runs/$1-$2"
  local t0 t1
  t0=$(date +%s.%N)
  # from $tmp: `python -m` / `-c` put the working directory first on sys.path
  (cd "$tmp" && PYTHONPATH="$wt" CLBENCH_TASKS_DIR="$wt/tasks" python -m cl_bench.cli run --setting "$setting" \
    --learner "$learner" --seed 0 --threads "$threads" --device cpu --out "$out" ${EXTRA:-} >/dev/null)
  t1=$(date +%s.%N)
  echo "$1 $2 $(echo "$t1 - $t0" | bc)" | tee -a "$tmp/times"
}
for side in a b; do  # each side must import its own worktree's package, not the installed one
  got="$(cd "$tmp" && PYTHONPATH="$tmp/$side" python -c 'import cl_bench; print(cl_bench.__file__)')"
  case "$got" in "$tmp/$side"/*) ;; *) echo "side $side imports $got, not its worktree" >&2; exit 2;; esac
done
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq 1 "$pairs"); do
  if [ $((i % 2)) -eq 1 ]; then run a "$i"; run b "$i"; else run b "$i"; run a "$i"; fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python - "$tmp" "$before" "$after" <<'EOF'
import hashlib, statistics, sys
from pathlib import Path
import pandas as pd
tmp, before, after = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
times = {}
for line in (tmp / "times").read_text().split("\n"):
    if line:
        side, pair, sec = line.split()
        times.setdefault(side, {})[pair] = float(sec)
ratios = [times["b"][p] / times["a"][p] for p in times["a"]]
print(f"A = {before}: " + ", ".join(f"{t:.1f}" for t in times["a"].values()) + " s")
print(f"B = {after}: " + ", ".join(f"{t:.1f}" for t in times["b"].values()) + " s")
print(f"median B/A = {statistics.median(ratios):.3f} (pairs: {', '.join(f'{r:.3f}' for r in ratios)})")
for name in ("accuracy", "summary", "domains"):
    # the table's values (a parquet file's bytes also hold writer metadata)
    digests = {hashlib.sha256(pd.read_parquet(run / f"{name}.parquet").to_csv().encode()).hexdigest()[:16]
               for run in sorted((tmp / "runs").iterdir()) if (run / f"{name}.parquet").exists()}
    print(f"{name}.parquet: {'bit-identical' if len(digests) == 1 else 'DIFFERENT'} across all runs ({', '.join(sorted(digests))})")
EOF
