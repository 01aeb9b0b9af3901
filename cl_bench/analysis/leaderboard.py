"""Many run directories -> paper-style tables (CoDyRA Tables 1-3 and a cost table).

Every number is recomputed from each run's accuracy.parquet with PROTOCOL.md §1
(`results.summarize`), then aggregated over seeds (mean, sample std with ddof = 1, count).
Costs come from the run manifests, never from typed-in values. One table compares like with
like: runs of different worlds, backbones, settings, orders, shots or budgets are refused.
Reference learners that train nothing (zeroshot) join a table of any training budget, and
published matrices (`clbench import`) join the user's runs of the same world, backbone,
setting, order, shots and stream (docs/leaderboard.md, "One comparison per table").
This module builds the tables (types in `cl_bench.analysis.tables`); rendering them as text
lives in `cl_bench.analysis.leaderboard_render`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cl_bench.analysis.leaderboard_render import RENDERERS
from cl_bench.analysis.metrics import mean_std
from cl_bench.analysis.results import (
    ACCURACY_FILE,
    DOMAINS_FILE,
    cross_domain_shares,
    find_run_dirs,
    learner_role,
    read_manifest,
    read_parquet,
    summarize,
)
from cl_bench.analysis.tables import (
    BUDGET_FIELDS,
    IMPORTED_WILDCARDS,
    MATCH_FIELDS,
    Board,
    Cell,
    Column,
    Row,
    Table,
)
from cl_bench.errors import UserError

METRICS = ("transfer", "average", "last", "gain", "forgetting")
COST_KEYS = (
    "trainable",
    "extra_inference",
    "stored_mb",
    "train_s",
    "eval_s",
    "rss_mb",
    "cuda_mb",
)
# the manifest's derived key of `RunContext.note_stored_data` (cl_bench.api.context, a higher
# layer: this module cannot import it; tests/test_leaderboard checks the two agree)
STORED_DATA_KEY = "stored_data"
METRIC_CHOICES = ("transfer", "average", "last", "all")
METRIC_TITLES = {
    "transfer": "Transfer",
    "average": "Average",
    "last": "Last",
    "gain": "Gain",
    "forgetting": "Forgetting",
}
LOWER_IS_BETTER = {"forgetting"}
FILTER_FLAGS = {"setting": "--setting", "world": "--world", "order": "--order", "shots": "--shots"}


@dataclass
class RunRecord:
    run_dir: Path
    manifest: dict[str, Any]
    summary: pd.DataFrame
    group: dict[str, Any]
    label: str
    seed: int
    cross_domain: pd.DataFrame | None = None  # task-agnostic runs: results.cross_domain_shares
    role: str = "continual"  # continual (ranked) | reference (shown, not ranked)
    wildcards: frozenset[str] = frozenset()  # MATCH_FIELDS this run matches whatever their value

    @property
    def imported(self) -> bool:
        return "imported" in self.manifest


# ------------------------------------------------------------------------------ loading
def _run_group(acc: pd.DataFrame, manifest: dict[str, Any]) -> dict[str, Any]:
    first = acc.iloc[0]
    backbone = manifest.get("backbone", {})
    setting = manifest.get("setting", {})
    pretrained = backbone.get("pretrained")
    return {
        "world": str(first["world"]),
        "model": str(first["model"]) + (f" ({pretrained})" if pretrained else ""),
        "setting": str(first["setting"]),
        "order": str(first["order"]),
        "shots": int(first["shots"]),
        "iterations": setting.get("iterations"),
        "batch_size": setting.get("batch_size"),
        "stream": " ".join(setting.get("datasets", [])),
        "eval_limit": manifest.get("config", {}).get("eval_limit"),
        "precision": manifest.get("config", {}).get("precision", "fp32"),
    }


def _label(manifest: dict[str, Any], learner: str) -> str:
    """The learner name, plus its --set overrides: other hyperparameters are another row.
    A published matrix: the name and where it was published (its own row)."""
    if "imported" in manifest:
        return f"{learner} (imported: {manifest['imported'].get('source', '?')})"
    overrides = manifest.get("config", {}).get("overrides") or {}
    if not overrides:
        return learner
    return learner + " (" + ", ".join(f"{k}={overrides[k]}" for k in sorted(overrides)) + ")"


def load_run(run_dir: Path) -> RunRecord:
    """Read one finished run and recompute its metrics; UserError says why it is unusable."""
    manifest = read_manifest(run_dir)
    status = manifest.get("status")
    if status != "finished":
        detail = f": {manifest['error']}" if manifest.get("error") else ""
        raise UserError(f"unfinished (status {status!r}{detail})")
    acc = read_parquet(run_dir / ACCURACY_FILE)
    if acc.empty:
        raise UserError(f"corrupt: {run_dir / ACCURACY_FILE} has no rows")
    try:
        summary = summarize(acc)
    except (UserError, KeyError, ValueError, IndexError) as exc:
        raise UserError(f"corrupt accuracy.parquet ({exc})") from None
    learner = str(acc["learner"].iloc[0])
    try:
        role, uses_budget = learner_role(manifest, learner)
        wildcards = frozenset(() if uses_budget else BUDGET_FIELDS)
        if "imported" in manifest:
            wildcards |= frozenset(IMPORTED_WILDCARDS)
        return RunRecord(
            run_dir,
            manifest,
            summary,
            _run_group(acc, manifest),
            _label(manifest, learner),
            int(acc["seed"].iloc[0]),
            _cross_domain(run_dir, int(acc["after_task"].max())),
            role,
            wildcards,
        )
    except (AttributeError, TypeError, ValueError, KeyError) as exc:  # a hand-made manifest
        raise UserError(
            f"manifest.json is not a cl-bench run manifest ({type(exc).__name__}: {exc})"
        ) from None


def _cross_domain(run_dir: Path, last_task: int) -> pd.DataFrame | None:
    """The run's cross-domain shares, or None without a complete domains.parquet (a run made
    before the file existed, or one resumed across that change, lacks early evaluations)."""
    path = run_dir / DOMAINS_FILE
    if not path.exists():
        return None
    shares = cross_domain_shares(read_parquet(path))
    return shares if list(shares.index) == list(range(last_task + 1)) else None


def _describe(group: dict[str, Any], fields: Iterable[str]) -> str:
    def show(f: str) -> str:
        names = str(group[f]).split()
        if f == "stream" and len(names) > 2:  # the full key, shortened for one error line
            return f"{len(names)} tasks {names[0]}..{names[-1]}"
        return str(group[f])

    return " ".join(f"{f}={show(f)}" for f in fields)


def collect_runs(
    paths: Iterable[Path], filters: dict[str, Any] | None = None
) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
    """Finished runs of exactly one comparison group, plus [(skipped dir, reason)]."""
    paths = [Path(p) for p in paths]
    filters = {k: v for k, v in (filters or {}).items() if v is not None}
    runs: list[RunRecord] = []
    skipped: list[tuple[Path, str]] = []
    for run_dir in sorted({d.resolve() for d in find_run_dirs(paths)}):
        try:
            runs.append(load_run(run_dir))
        except UserError as exc:
            skipped.append((run_dir, str(exc)))
    where = ", ".join(str(p) for p in paths)
    if not runs:
        reasons = (
            f" ({len(skipped)} skipped, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        )
        raise UserError(
            f"no finished runs under {where}{reasons}; run `clbench run` or `clbench sweep` first"
        )
    kept = [r for r in runs if all(str(r.group[k]) == str(v) for k, v in filters.items())]
    if not kept:
        found = sorted({_describe(r.group, filters) for r in runs})
        raise UserError(
            f"no finished run matches {_describe(filters, filters)} under {where}; found: {'; '.join(found)}"
        )
    _check_one_group(kept)
    _check_unique_seeds(kept)
    return kept, skipped


def _differing(runs: list[RunRecord]) -> list[str]:
    """The MATCH_FIELDS on which runs disagree; a run's wildcards agree with any value."""
    return [
        f for f in MATCH_FIELDS if len({str(r.group[f]) for r in runs if f not in r.wildcards}) > 1
    ]


def board_group(runs: list[RunRecord]) -> dict[str, Any]:
    """The table's identity: each field's value among the runs that fix it (None: no run
    does, e.g. the budget of a table of zero-shot and imported rows only)."""
    group: dict[str, Any] = {}
    for f in MATCH_FIELDS:
        fixed = [r.group[f] for r in runs if f not in r.wildcards]
        group[f] = fixed[0] if fixed else None
    return group


def _check_one_group(runs: list[RunRecord]) -> None:
    differing = _differing(runs)
    if not differing:
        return
    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        key = tuple("any" if f in r.wildcards else str(r.group[f]) for f in differing)
        groups.setdefault(key, []).append(r)
    keys = sorted(groups)

    parts = [
        f"{_describe(dict(zip(differing, k, strict=True)), differing)} ({len(groups[k])} run{'s' * (len(groups[k]) > 1)})"
        for k in keys
    ]
    flags = [FILTER_FLAGS[f] for f in differing if f in FILTER_FLAGS]
    hint = (
        f"pick one with {'/'.join(flags)} or pass only one group's run directories"
        if flags
        else "pass only one group's run directories"
    )
    raise UserError(
        f"refusing to mix {len(groups)} groups of runs in one table: {'; '.join(parts)}; {hint}"
    )


def _check_unique_seeds(runs: list[RunRecord]) -> None:
    seen: dict[tuple[str, int], Path] = {}
    for r in runs:
        other = seen.setdefault((r.label, r.seed), r.run_dir)
        if other != r.run_dir:
            raise UserError(
                f"two runs of {r.label} with seed {r.seed}: {other} and {r.run_dir}; pass only one of them"
            )


# ------------------------------------------------------------------------------ tables
def _metric_value(summary: pd.DataFrame, metric: str, dataset: str) -> float:
    rows = summary[summary["dataset"] == dataset]
    return float(rows[metric].iloc[0]) if len(rows) else float("nan")


def _rows_by_label(runs: list[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """Rows sorted by label; reference learners (no trainable parameters) come first."""
    by: dict[str, list[RunRecord]] = {}
    for r in runs:
        by.setdefault(r.label, []).append(r)
    items = [(label, sorted(rs, key=lambda r: r.seed)) for label, rs in by.items()]
    return sorted(items, key=lambda it: (not _is_reference(it[1]), it[0]))


def _is_reference(runs: list[RunRecord]) -> bool:
    """Rows of reference learners (zeroshot, the joint / individual upper bounds) are shown
    first and never ranked; the role comes from the manifest (results.learner_role)."""
    return all(r.role == "reference" for r in runs)


def _table(key: str, title: str, columns: list[Column], runs: list[RunRecord], value) -> Table:
    """value(run, column_index) -> float; aggregates over the runs of each row."""
    rows = []
    for label, group in _rows_by_label(runs):
        cells = [Cell(*mean_std([value(r, i) for r in group])) for i in range(len(columns))]
        rows.append(Row(label, len(group), cells, _is_reference(group)))
    table = Table(key, title, columns, rows)
    _mark(table)
    return table


def _display_value(column: Column, value: float) -> float:
    return round(value, 1) if column.unit == "pct" else value


def _mark(table: Table) -> None:
    """Best / second best per ranked column among non-reference rows, at display precision."""
    for j, column in enumerate(table.columns):
        if column.better is None:
            continue
        candidates = [
            (i, _display_value(column, row.cells[j].mean))
            for i, row in enumerate(table.rows)
            if not row.reference and row.cells[j].n > 0
        ]
        if len(candidates) < 2:
            continue
        distinct = sorted({v for _, v in candidates}, reverse=column.better == "high")
        for i, v in candidates:
            if v == distinct[0]:
                table.marks[(i, j)] = "best"
            elif len(candidates) >= 3 and len(distinct) > 1 and v == distinct[1]:
                table.marks[(i, j)] = "second"


def stream_names(runs: list[RunRecord]) -> list[str]:
    s = runs[0].summary
    return list(s[s["split"] == "stream"]["dataset"])


def holdout_names(runs: list[RunRecord]) -> list[str]:
    s = runs[0].summary
    return list(s[s["split"] == "holdout"]["dataset"])


def holdout_sets(runs: list[RunRecord]) -> list[tuple[tuple[str, ...], list[RunRecord]]]:
    """Runs grouped by the hold-out datasets they evaluated (`--holdout` changes the set; a run
    with none is in no hold-out table): the largest group first, then by names."""
    sets: dict[tuple[str, ...], list[RunRecord]] = {}
    for r in runs:
        names = tuple(holdout_names([r]))
        if names:
            sets.setdefault(names, []).append(r)
    return sorted(sets.items(), key=lambda item: (-len(item[1]), item[0]))


def metric_tables(runs: list[RunRecord], metrics: list[str], per_dataset: bool) -> list[Table]:
    if not per_dataset:
        columns = [
            Column(METRIC_TITLES[m], better="low" if m in LOWER_IS_BETTER else "high")
            for m in metrics
        ]
        return [
            _table(
                "summary",
                "Mean over the stream's datasets (%)",
                columns,
                runs,
                lambda r, i: _metric_value(r.summary, metrics[i], "mean"),
            )
        ]
    names = stream_names(runs) + ["mean"]
    tables = []
    for m in metrics:
        better = "low" if m in LOWER_IS_BETTER else "high"
        columns = [Column(n, better=better) for n in names]
        tables.append(
            _table(
                m,
                f"{METRIC_TITLES[m]} (%)",
                columns,
                runs,
                lambda r, i, m=m: _metric_value(r.summary, m, names[i]),
            )
        )
    return tables


def holdout_tables(runs: list[RunRecord]) -> list[Table]:
    """One hold-out table per hold-out set: runs evaluated on other datasets are never
    averaged into one column (nor their means into one "mean")."""
    sets = holdout_sets(runs)
    tables = []
    for held, group in sets:
        names = [*held, "mean"]
        key, title = (
            "holdout",
            "Hold-out transfer (%): mean over tasks of unseen datasets' accuracy",
        )
        if len(sets) > 1:
            key, title = f"holdout-{'-'.join(held)}", f"{title}; runs held out {', '.join(held)}"
        tables.append(
            _table(
                key,
                title,
                [Column(n) for n in names],
                group,
                lambda r, i, names=names: _metric_value(r.summary, "holdout_transfer", names[i]),
            )
        )
    return tables


def holdout_table(runs: list[RunRecord]) -> Table | None:
    """The hold-out table of the largest hold-out set (`clbench compare`'s bars)."""
    tables = holdout_tables(runs)
    return tables[0] if tables else None


def cross_domain_table(runs: list[RunRecord], per_dataset: bool) -> Table | None:
    """Task-agnostic runs: how much of each domain's test set goes to another domain's classes.

    Shown only when every run has domains.parquet (runs made before it existed have none).
    """
    if not runs or any(r.cross_domain is None for r in runs):
        return None
    title = "Cross-domain predictions (%): test images classified into another domain's classes"
    if per_dataset:
        names = stream_names(runs)
        return _table(
            "cross_domain",
            f"{title}, after the last task",
            [Column(n, better="low") for n in names + ["mean"]],
            runs,
            lambda r, i: (
                float(r.cross_domain.iloc[-1][names].mean())
                if i == len(names)
                else float(r.cross_domain.iloc[-1][names[i]])
            ),
        )
    spec = [
        ("zero-shot", lambda d: d.iloc[0]),
        ("mean over tasks", lambda d: d.iloc[1:].to_numpy().mean()),
        ("after the last task", lambda d: d.iloc[-1]),
    ]
    return _table(
        "cross_domain",
        f"{title}, mean over the stream's datasets",
        [Column(name, better=None if name == "zero-shot" else "low") for name, _ in spec],
        runs,
        lambda r, i: float(np.mean(spec[i][1](r.cross_domain))),
    )


def run_costs(manifest: dict[str, Any]) -> dict[str, float]:
    """What one run measured: parameters, time and memory (manifest values only). An imported
    matrix measured nothing here: every cost is NaN (an empty cell), never 0."""
    if "imported" in manifest:
        return dict.fromkeys(COST_KEYS, float("nan"))
    tasks = manifest.get("tasks", [])
    cuda = [t["peak_cuda_mb"] for t in tasks if t.get("peak_cuda_mb") is not None]
    reported = [manifest.get("peak_rss_mb")] + [t.get("peak_rss_mb") for t in tasks]
    rss = [v for v in reported if v is not None]
    stored = (manifest.get("derived") or {}).get(STORED_DATA_KEY) or {}
    return {
        "trainable": float(max((t.get("trainable_parameters") or 0 for t in tasks), default=0)),
        "extra_inference": float(manifest.get("extra_inference_parameters", np.nan)),
        # a learner that never noted stored data keeps none of the past tasks' data
        "stored_mb": float(stored.get("mb", 0.0)),
        "train_s": float(sum(t.get("train_time_s") or 0.0 for t in tasks)),
        "eval_s": float(sum(t.get("eval_time_s") or 0.0 for t in tasks)),
        "rss_mb": float(max(rss)) if rss else float("nan"),
        "cuda_mb": float(max(cuda)) if cuda else float("nan"),
    }


def cost_table(runs: list[RunRecord]) -> Table:
    costs = {id(r): run_costs(r.manifest) for r in runs}
    spec = [
        ("trainable", Column("trainable params (max per task)", "params", None)),
        ("extra_inference", Column("extra inference params", "params", None)),
        ("stored_mb", Column("stored data (MB)", "stored_mb", None)),
        ("train_s", Column("train time (s)", "seconds", None)),
        ("eval_s", Column("eval time (s)", "seconds", None)),
        ("rss_mb", Column("peak RSS (MB)", "mb", None)),
    ]
    if any(not np.isnan(c["cuda_mb"]) for c in costs.values()):
        spec.append(("cuda_mb", Column("peak CUDA (MB)", "mb", None)))
    return _table(
        "cost",
        "Cost, as measured by the runs",
        [c for _, c in spec],
        runs,
        lambda r, i: costs[id(r)][spec[i][0]],
    )


def build_board(
    paths: Iterable[Path],
    metric: str = "all",
    per_dataset: bool = False,
    filters: dict[str, Any] | None = None,
) -> tuple[Board, list[tuple[Path, str]]]:
    if metric not in METRIC_CHOICES:
        raise UserError(f"unknown --metric {metric!r}; valid: {', '.join(METRIC_CHOICES)}")
    runs, skipped = collect_runs(paths, filters)
    metrics = list(METRICS) if metric == "all" else [metric]
    tables = metric_tables(runs, metrics, per_dataset)
    tables += holdout_tables(runs)
    cross = cross_domain_table(runs, per_dataset)
    if cross is not None:
        tables.append(cross)
    tables.append(cost_table(runs))
    return Board(board_group(runs), len(runs), tables), skipped


def render_leaderboard(
    dirs: Iterable[Path],
    setting: str | None = None,
    metric: str = "all",
    per_dataset: bool = False,
    fmt: str = "markdown",
    world: str | None = None,
    order: str | None = None,
    shots: int | None = None,
) -> tuple[str, list[tuple[Path, str]]]:
    """The leaderboard text in `fmt` and the runs that were skipped, with why."""
    _, text, skipped = make_leaderboard(
        dirs, setting, metric, per_dataset, fmt, world, order, shots
    )
    return text, skipped


def make_leaderboard(
    dirs: Iterable[Path],
    setting: str | None = None,
    metric: str = "all",
    per_dataset: bool = False,
    fmt: str = "markdown",
    world: str | None = None,
    order: str | None = None,
    shots: int | None = None,
) -> tuple[Board, str, list[tuple[Path, str]]]:
    """(the board, its text in `fmt`, the runs skipped with why): the CLI and the Python API."""
    if fmt not in RENDERERS:
        raise UserError(f"unknown --format {fmt!r}; valid: {', '.join(RENDERERS)}")
    filters = {"setting": setting, "world": world, "order": order, "shots": shots}
    board, skipped = build_board(dirs, metric, per_dataset, filters)
    return board, RENDERERS[fmt](board), skipped
