"""matplotlib helpers shared by the run report and the leaderboard, and the compare chart.

matplotlib is imported lazily with the Agg backend (no display needed). The compare chart is
drawn from a leaderboard `Board`, so `clbench compare` (PNG) and the HTML leaderboard show the
same bars; this module imports only the table types, never the module that builds boards.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from cl_bench.analysis.tables import Board, Cell

DPI = 120
# Bars of the compare chart: accuracies on one 0-100 scale (Gain/Forgetting are differences).
COMPARED = {"transfer": "Transfer", "average": "Average", "last": "Last"}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return path


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def _mean_column(columns: list[Any]) -> int | None:
    return next((j for j, c in enumerate(columns) if c.name == "mean"), None)


def compare_bars(board: Board) -> tuple[list[str], list[tuple[str, int, list[Cell]]]]:
    """(bar groups, [(learner, seeds, one cell per group)]) from a board's tables: Transfer /
    Average / Last of the stream mean (summary table or the per-dataset tables' mean column)
    and the hold-out mean."""
    groups: list[str] = []
    rows: dict[str, tuple[int, list[Cell]]] = {}
    for t in board.tables:
        if t.key == "summary":
            picks = [(c.name, j) for j, c in enumerate(t.columns) if c.name in COMPARED.values()]
        elif t.key in COMPARED or t.key == "holdout":
            j = _mean_column(t.columns)
            picks = [] if j is None else [(COMPARED.get(t.key, "Hold-out"), j)]
        else:
            continue
        for name, j in picks:
            groups.append(name)
            for row in t.rows:
                rows.setdefault(row.label, (row.seeds, []))[1].append(row.cells[j])
    return groups, [(label, seeds, cells) for label, (seeds, cells) in rows.items()]


def compare_figure(board: Board) -> Any | None:
    """Bars of mean Transfer / Average / Last (and hold-out) per learner, std over seeds; None
    when the board has none of those columns (e.g. --metric gain)."""
    groups, rows = compare_bars(board)
    if not groups:
        return None
    plt = pyplot()
    n = len(rows)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 0.4 * n), 4.5))
    cmap = plt.get_cmap("tab10")
    for i, (label, seeds, cells) in enumerate(rows):
        means = np.array([c.mean for c in cells])
        stds = np.array([c.std if c.n > 1 else 0.0 for c in cells])
        x = np.arange(len(groups)) - 0.4 + width * (i + 0.5)
        bars = ax.bar(
            x, means, width, yerr=stds, capsize=3, color=cmap(i % 10), label=f"{label} (n={seeds})"
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2, rotation=90 if n > 4 else 0)
    g = board.group
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("mean accuracy (%)  ± std over seeds")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(
        f"Learners compared · {g['world']} {g['setting']} order {g['order']} · {g['model']}",
        fontsize=10,
    )
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return fig
