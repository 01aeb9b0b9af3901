"""The leaderboard's table types: what `leaderboard` builds and `leaderboard_render` writes.

`leaderboard` (which also picks a renderer) and `leaderboard_render` both import them from
here, so the renderers never import the module that builds the boards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The identity of a comparison: runs that differ in any of these never share a table.
GROUP_FIELDS = (
    "world",
    "model",
    "setting",
    "order",
    "shots",
    "iterations",
    "stream",
    "precision",
    "eval_limit",
)
# Compared as well, but not named in a table's heading (committed tables keep their text).
MATCH_FIELDS = (*GROUP_FIELDS, "batch_size")
# The training budget: a learner that trains nothing (zeroshot) matches any of its values.
BUDGET_FIELDS = ("iterations", "batch_size")
# A published matrix (clbench import): its budget and precision are the paper's, not
# recorded; it matches on world, backbone, setting, order, shots, stream and eval limit.
IMPORTED_WILDCARDS = (*BUDGET_FIELDS, "precision")


@dataclass(frozen=True)
class Column:
    """One table column: its header, how to format it, and which direction is better."""

    name: str
    unit: str = "pct"  # pct | params | seconds | mb | stored_mb
    better: str | None = "high"  # high | low | None (not ranked)


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float
    n: int


@dataclass
class Row:
    label: str
    seeds: int
    cells: list[Cell]
    reference: bool  # learner role "reference" (zeroshot, upper bounds): shown, not ranked


@dataclass
class Table:
    key: str  # transfer | ... | summary | holdout | cost (csv column, anchors)
    title: str
    columns: list[Column]
    rows: list[Row]
    marks: dict[tuple[int, int], str] = field(default_factory=dict)  # (row, col) -> best|second


@dataclass
class Board:
    group: dict[str, Any]
    runs: int
    tables: list[Table]
