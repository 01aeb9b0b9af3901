"""One row per run folder for docs/toy-world.md's budget x capacity table (issue 25).

    python benchmarks/budget_table.py results/toy/xtail/runs/toy-xtail-drslora-seed0 \
        results/toy/xtail/budget/it500/toy-xtail-drslora-seed0 ...

Per run: iterations, Transfer / Last, gain, forgetting (PROTOCOL.md §1, from summary.parquet),
surviving ranks (ranks.parquet, % over every task's adapted matrices; drslora only),
cross-domain share after the last task (% of the stream's test images classified into another
domain's classes, domains.parquet) and the manifest's wall time with its load average.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cl_bench.analysis.results import cross_domain_shares, read_parquet


def row(run: Path) -> str:
    manifest = json.loads((run / "manifest.json").read_text())
    summary = read_parquet(run / "summary.parquet")
    mean = (
        summary[summary["dataset"] == "mean"].iloc[0] if "dataset" in summary else summary.iloc[-1]
    )
    ranks_path = run / "ranks.parquet"
    surviving = "—"
    if ranks_path.exists():
        ranks = read_parquet(ranks_path)
        surviving = f"{100 * ranks['surviving'].sum() / ranks['rank'].sum():.1f} %"
    domains_path = run / "domains.parquet"
    cross = "—"
    if domains_path.exists():
        shares = cross_domain_shares(read_parquet(domains_path))
        cross = f"{shares.iloc[-1].mean():.1f} %"
    iterations = manifest["setting"]["iterations"]
    return (
        f"| {manifest['learner']['name']} | {iterations} | {mean['transfer']:.1f} | {mean['last']:.1f} "
        f"| {mean['gain']:.1f} | {mean['forgetting']:.1f} | {surviving} | {cross} "
        f"| {manifest['wall_time_s']:.0f} s (load {manifest.get('load_average_1min', float('nan')):.1f}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print(
        "| learner | iterations | Transfer | Last | gain | forgetting | surviving ranks | cross-domain (last) | wall time |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        print(row(run))


if __name__ == "__main__":
    main()
