"""What the CLI draws: rich progress bars, the run summary table, listings."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)


class RichReporter:
    """Engine progress as rich bars: one per training task and one per evaluation."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.current: TaskID | None = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def phase(self, label: str, total: int) -> None:
        if self.current is not None:
            self.progress.update(self.current, completed=self.progress.tasks[-1].total)
        self.current = self.progress.add_task(label, total=total, info="")

    def advance(self, n: int = 1, scalars: dict[str, float] | None = None) -> None:
        if self.current is None:
            return
        info = "  ".join(
            f"{k}={v:.4g}" for k, v in (scalars or {}).items() if k not in ("task", "step")
        )
        if info:
            self.progress.update(self.current, advance=n, info=info)
        else:
            self.progress.update(self.current, advance=n)

    def message(self, text: str) -> None:
        self.progress.console.print(f"[dim]{text}[/dim]")


def print_summary(outcome: Any) -> None:
    """The final table: per dataset Transfer / Average / Last, hold-out, and the means."""
    s = outcome.summary
    table = Table(title=f"{outcome.manifest.get('run_id', '')}  ({outcome.run_dir})")
    for col in ("dataset", "split", "transfer", "average", "last", "hold-out"):
        table.add_column(col, justify="left" if col in ("dataset", "split") else "right")

    def fmt(v: float) -> str:
        return "—" if v != v else f"{v:.1f}"

    for r in s.itertuples():
        table.add_row(
            r.dataset,
            r.split,
            fmt(r.transfer),
            fmt(r.average),
            fmt(r.last),
            fmt(r.holdout_transfer),
        )
    mean = s[s["split"] == "mean"].iloc[0]
    Console().print(table)
    Console().print(
        f"gain {fmt(mean['gain'])}  forgetting {fmt(mean['forgetting'])}  wall {outcome.manifest.get('wall_time_s')} s"
    )


def describe_target(target: str) -> str:
    """A learner's `description` read from its source with ast (no import, no torch)."""
    module, _, attr = target.rpartition(":")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return "(module not importable)"
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return "(module not found)"
    with open(spec.origin, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == attr:
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and any(getattr(t, "id", None) == "description" for t in stmt.targets)
                    and isinstance(stmt.value, ast.Constant)
                ):
                    return str(stmt.value.value)
            doc = ast.get_docstring(node)
            return doc.splitlines()[0] if doc else ""
    return "(class not found)"


def print_rows(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title=title)
    for key in rows[0] if rows else []:
        table.add_column(key)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)


def dataset_rows(world: str) -> list[dict[str, Any]]:
    from cl_bench.data.worlds import world_class, world_names
    from cl_bench.errors import UserError

    names = world_names()
    if world not in (*names, "all"):
        raise UserError(f"unknown world {world!r}; valid: {', '.join(names)}, all")
    rows = []
    for name in names:
        if world not in (name, "all"):
            continue
        w = world_class(name)()
        for ds in w.dataset_names():
            info = w.dataset_info(ds)
            rows.append(
                {
                    "name": ds,
                    "num_classes": info.num_classes,
                    "num_templates": len(info.templates),
                    "world": name,
                }
            )
    return rows
