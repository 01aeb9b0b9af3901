"""Leaderboard tables -> markdown, LaTeX, CSV or HTML text.

HTML is a whole self-contained page (cl_bench.analysis.html_page) with the compare chart
embedded as a PNG data URI, styled as `clbench report --html`.

Output is deterministic (rows sorted, fixed float formats, no timestamps), so re-rendering
committed runs reproduces committed tables byte for byte.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable

from cl_bench.analysis import html_page as hp
from cl_bench.analysis.plots import compare_figure, png_bytes
from cl_bench.analysis.tables import GROUP_FIELDS, Board, Cell, Column, Table

NOTE = (
    "Mean ± sample standard deviation (ddof = 1) over seeds; seeds = runs in the row. "
    "Best and second best are marked per column among the continual learners; reference rows "
    "(zeroshot and the joint / individual upper bounds) are shown beside them, not ranked. "
    "Transfer has no value for the first dataset of the stream."
)
# A table's heading names its group by every identity field but the stream itself (the
# datasets are the table's columns).
GROUP_ORDER = tuple(f for f in GROUP_FIELDS if f != "stream")


def _number(unit: str, value: float) -> str:
    if unit == "params":
        v = int(round(value))
        if abs(v) >= 1_000_000:
            return f"{v / 1e6:.2f}M"
        if abs(v) >= 1_000:
            return f"{v / 1e3:.1f}K"
        return str(v)
    text = f"{value:.0f}" if unit == "mb" else f"{value:.1f}"  # mb | pct, seconds
    return text[1:] if text.lstrip("-0.") == "" and text.startswith("-") else text  # no "-0.0"


def cell_text(column: Column, cell: Cell) -> str:
    if cell.n == 0 or math.isnan(cell.mean):
        return "—"
    if column.unit == "stored_mb":  # a few MB on the toy: 2 decimals below 10 MB
        digits = 0 if cell.mean == 0 or abs(cell.mean) >= 10 else 2
        text = f"{cell.mean:.{digits}f}"
        if cell.n > 1 and cell.std > 0:  # the store is the same for every seed as a rule
            text += f" ± {cell.std:.{digits}f}"
        return text
    text = _number(column.unit, cell.mean)
    if column.unit != "params" and cell.n > 1 and not math.isnan(cell.std):
        text += " ± " + _number(column.unit, cell.std)
    return text


def group_line(board: Board) -> str:
    g = board.group
    parts = [f"{k} {g[k]}" for k in GROUP_ORDER if g.get(k) is not None]
    return " · ".join(parts) + f" · {board.runs} runs"


def _grid(table: Table, mark: Callable[[str, str], str]) -> list[list[str]]:
    """Rows of strings: learner, seeds, then one formatted cell per column."""
    out = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, (column, cell) in enumerate(zip(table.columns, row.cells, strict=True)):
            text = cell_text(column, cell)
            kind = table.marks.get((i, j))
            cells.append(mark(text, kind) if kind else text)
        out.append([row.label, str(row.seeds), *cells])
    return out


# ------------------------------------------------------------------------------ markdown
def _md_mark(text: str, kind: str) -> str:
    return f"**{text}**" if kind == "best" else f"<u>{text}</u>"


def _md_line(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def render_markdown(board: Board) -> str:
    lines = ["## cl-bench leaderboard", "", group_line(board), "", NOTE, ""]
    for table in board.tables:
        header = ["learner", "seeds", *(c.name for c in table.columns)]
        body = _grid(table, _md_mark)
        widths = [max(len(r[k]) for r in [header, *body]) for k in range(len(header))]
        align = ["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]

        lines += [
            f"### {table.title}",
            "",
            _md_line(header, widths),
            "| " + " | ".join(align) + " |",
        ]
        lines += [_md_line(r, widths) for r in body]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ LaTeX
def _tex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
    ):
        text = text.replace(a, b)
    return text.replace("—", "--").replace("±", r"$\pm$")


def _tex_mark(text: str, kind: str) -> str:
    return rf"\textbf{{{text}}}" if kind == "best" else rf"\underline{{{text}}}"


def render_latex(board: Board) -> str:
    lines = [
        "% cl-bench leaderboard (needs \\usepackage{booktabs})",
        f"% {group_line(board)}",
        f"% {NOTE}",
        "",
    ]
    for table in board.tables:
        header = ["Learner", "Seeds", *(_tex_escape(c.name) for c in table.columns)]
        body = [
            [_tex_escape(r[0]), r[1], *(_tex_escape(c) for c in r[2:])]
            for r in _grid(table, lambda t, k: t)
        ]
        for (i, j), kind in sorted(table.marks.items()):
            body[i][j + 2] = _tex_mark(body[i][j + 2], kind)
        lines += [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{_tex_escape(table.title)}}}",
            r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
            r"\toprule",
            " & ".join(header) + r" \\",
            r"\midrule",
            *(" & ".join(r) + r" \\" for r in body),
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ CSV
def _csv_float(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"


def render_csv(board: Board) -> str:
    """Long format: one line per (table, learner, column), raw numbers at 4 decimals."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    group_cols = [k for k in GROUP_ORDER if k != "eval_limit"]
    writer.writerow(
        [*group_cols, "table", "learner", "seeds", "column", "mean", "std", "n", "mark"]
    )
    for table in board.tables:
        for i, row in enumerate(table.rows):
            for j, (column, cell) in enumerate(zip(table.columns, row.cells, strict=True)):
                writer.writerow(
                    [
                        *(board.group[k] for k in group_cols),
                        table.key,
                        row.label,
                        row.seeds,
                        column.name,
                        _csv_float(cell.mean),
                        _csv_float(cell.std),
                        cell.n,
                        table.marks.get((i, j), ""),
                    ]
                )
    return buf.getvalue()


# ------------------------------------------------------------------------------ HTML
def render_html(board: Board) -> str:
    """One self-contained page (html_page): every table, and the compare chart embedded."""
    body = [f'<p class="note">{html.escape(NOTE)}</p>']
    fig = compare_figure(board)
    if fig is not None:
        body += ['<section id="compare"><h2>Learners compared</h2>']
        body += [hp.figure(png_bytes(fig), "Mean ± std over seeds per learner"), "</section>"]
    for table in board.tables:
        header = ["learner", "seeds", *(c.name for c in table.columns)]
        marks = {(i, j + 2): kind for (i, j), kind in table.marks.items()}
        classes = ["reference" if row.reference else "" for row in table.rows]
        body += [
            f'<section id="{html.escape(table.key)}"><h2>{html.escape(table.title)}</h2>',
            hp.table(header, _grid(table, lambda t, k: t), marks, classes),
            "</section>",
        ]
    return hp.page("cl-bench leaderboard", group_line(board), body, "clbench-leaderboard")


RENDERERS: dict[str, Callable[[Board], str]] = {
    "markdown": render_markdown,
    "latex": render_latex,
    "csv": render_csv,
    "html": render_html,
}
