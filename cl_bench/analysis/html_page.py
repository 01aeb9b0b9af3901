"""Self-contained HTML pages: `clbench report --html` and `clbench leaderboard --format html`.

One file, nothing fetched: the CSS is inline, images are embedded as base64 `data:image/png`
URIs, there are no scripts, fonts or external links, so a page can be mailed or attached to an
issue and renders the same offline. Every text that comes from a run directory (learner,
dataset and run names, titles) goes through `html.escape`; callers pass plain text.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --head: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; color: var(--fg); background: #fff;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 6px; }
p { margin: 4px 0 8px; }
.meta, .note, figcaption { color: var(--muted); }
.note { font-size: 13px; }
nav { margin: 8px 0 0; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 10px; text-align: right; white-space: nowrap; }
th { background: var(--head); font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
tr.reference td { color: var(--muted); font-style: italic; }
tr.mean td { font-weight: 600; background: #fbfbfc; }
td b { color: #0b5d1e; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
figure { margin: 8px 0 18px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; }
""".strip()

esc = html.escape


def png_data_uri(png: bytes | Path) -> str:
    """A PNG (bytes or a file) as a `data:image/png;base64,...` URI."""
    data = Path(png).read_bytes() if isinstance(png, Path) else png
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{png if isinstance(png, Path) else 'bytes'} is not a PNG")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(png: bytes | Path, caption: str, anchor: str | None = None) -> str:
    """An embedded PNG with its caption (plain text)."""
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return (
        f'<figure{ident}><img src="{png_data_uri(png)}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    marks: dict[tuple[int, int], str] | None = None,
    row_classes: Sequence[str] | None = None,
) -> str:
    """A table of plain-text cells; marks[(row, cell)] = best (bold) | second (underlined)."""
    marks = marks or {}
    lines = ["<table>", "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header)]
    lines.append("</tr></thead>")
    lines.append("<tbody>")
    for i, row in enumerate(rows):
        cells = []
        for j, text in enumerate(row):
            cell = esc(text)
            kind = marks.get((i, j))
            cells.append(f"<b>{cell}</b>" if kind == "best" else f"<u>{cell}</u>" if kind else cell)
        css = row_classes[i] if row_classes and row_classes[i] else ""
        attr = f' class="{esc(css)}"' if css else ""
        lines.append(f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def facts(items: Sequence[tuple[str, str]]) -> str:
    """A definition list of (name, value) pairs, both plain text."""
    body = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
    return f'<dl class="facts">{body}</dl>'


def nav(links: Sequence[tuple[str, str]]) -> str:
    """In-page links: (anchor, label)."""
    return "<nav>" + "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in links) + "</nav>"


def page(title: str, subtitle: str, body: Sequence[str], css_class: str) -> str:
    """A whole document: title and subtitle are plain text, body is HTML made here."""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(title)}</title>",
            f"<style>\n{CSS}\n</style>",
            "</head>",
            f'<body class="{esc(css_class)}">',
            "<main>",
            f"<h1>{esc(title)}</h1>",
            f'<p class="meta">{esc(subtitle)}</p>',
            *body,
            "<footer>Written by cl-bench; one self-contained file (no scripts, no "
            "external resources).</footer>",
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )
