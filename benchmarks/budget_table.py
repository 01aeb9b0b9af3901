"""docs/toy-world.md's budget x capacity table (issue 25): one row per (toy model, learner,
iterations), mean ± std (ddof 1) over the seeds given.

    python benchmarks/budget_table.py results/toy/xtail/runs/toy-xtail-drslora-seed0 \
        results/toy/xtail/budget/it500/toy-xtail-drslora-seed* ...

Per run: Transfer / Last, gain, forgetting (PROTOCOL.md §1, from summary.parquet), surviving
ranks (ranks.parquet, % over every task's adapted matrices; drslora only), cross-domain share
after the last task (% of the stream's test images classified into another domain's classes,
domains.parquet) and the manifest's wall time (mean over the seeds; the load average beside
it says how busy the machine was).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from cl_bench.analysis.results import cross_domain_shares, read_parquet

METRICS = ("transfer", "last", "gain", "forgetting", "surviving", "cross", "wall", "load")


def measure(run: Path) -> tuple[tuple[str, str, int], dict[str, float | None]]:
    manifest = json.loads((run / "manifest.json").read_text())
    if manifest.get("status") != "finished":
        raise SystemExit(f"{run}: not a finished run (status {manifest.get('status')!r})")
    summary = read_parquet(run / "summary.parquet")
    mean = (
        summary[summary["dataset"] == "mean"].iloc[0] if "dataset" in summary else summary.iloc[-1]
    )
    values: dict[str, float | None] = {k: float(mean[k]) for k in METRICS[:4]}
    ranks_path = run / "ranks.parquet"
    values["surviving"] = None
    if ranks_path.exists():
        ranks = read_parquet(ranks_path)
        values["surviving"] = 100 * ranks["surviving"].sum() / ranks["rank"].sum()
    domains_path = run / "domains.parquet"
    values["cross"] = None
    if domains_path.exists():
        values["cross"] = float(cross_domain_shares(read_parquet(domains_path)).iloc[-1].mean())
    values["wall"] = float(manifest["wall_time_s"])
    values["load"] = manifest.get("load_average_1min")
    model = manifest.get("config", {}).get("toy_model", "small")
    key = (model, manifest["learner"]["name"], int(manifest["setting"]["iterations"]))
    return key, values


def cell(values: list[float | None], unit: str = "") -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    if len(known) == 1:
        return f"{known[0]:.1f}{unit}"
    return f"{statistics.mean(known):.1f} ± {statistics.stdev(known):.1f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    groups: dict[tuple[str, str, int], list[dict[str, float | None]]] = {}
    for run in args.runs:
        key, values = measure(run)
        groups.setdefault(key, []).append(values)
    print(
        "| toy model | learner | iterations | seeds | Transfer | Last | gain | forgetting "
        "| surviving ranks | cross-domain (last) | wall time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (model, learner, iterations), runs in groups.items():
        col = {k: [r[k] for r in runs] for k in METRICS}
        loads = [v for v in col["load"] if v is not None]
        load = f" (load {max(loads):.1f})" if loads else ""
        wall = f"{statistics.mean(v for v in col['wall'] if v is not None):.0f} s{load}"
        print(
            f"| {model} | {learner} | {iterations} | {len(runs)} | {cell(col['transfer'])} "
            f"| {cell(col['last'])} | {cell(col['gain'])} | {cell(col['forgetting'])} "
            f"| {cell(col['surviving'], ' %')} | {cell(col['cross'], ' %')} | {wall} |"
        )


if __name__ == "__main__":
    main()
