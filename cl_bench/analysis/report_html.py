"""`clbench report RUN_DIR --html`: one self-contained HTML page of a run.

The page holds the run's identity, the summary table (per dataset Transfer / Average / Last
and hold-out, the means, gain and forgetting — what `clbench run` prints at the end, recomputed
from accuracy.parquet as the leaderboard does), and every PNG that `report_run` draws for the
run (accuracy matrix, per-dataset curves, training curves, and the learner's own records:
ranks, gates, selections, cross-domain confusion), embedded as data URIs.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from cl_bench.analysis import html_page as hp
from cl_bench.analysis.report import read_evaluated_run, report_run
from cl_bench.analysis.results import summarize
from cl_bench.errors import UserError

REPORT_FILE = "report.html"
# PNG name prefix -> (section anchor, heading); report_run's file names, in page order.
SECTIONS = [
    ("accuracy_matrix", "matrix", "Accuracy matrix"),
    ("accuracy_stream", "curves", "Per-dataset accuracy across the stream"),
    ("train_", "training", "Training curves"),
    ("ranks_", "ranks", "Rank allocation (ranks.parquet)"),
    ("gates_", "gates", "Active LoRA blocks (gates.parquet)"),
    ("selected_", "selected", "Selected tensors (selected.parquet)"),
    ("domains", "domains", "Cross-domain confusion (domains.parquet)"),
]
OTHER = ("", "other", "Other plots")


def _fmt(value: Any) -> str:
    return (
        "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"
    )


def _facts(manifest: dict[str, Any], acc: pd.DataFrame) -> list[tuple[str, str]]:
    first = acc.iloc[0]
    learner = manifest.get("learner") or {}
    backbone = manifest.get("backbone") or {}
    versions = manifest.get("versions") or {}
    tasks = manifest.get("tasks") or []
    trainable = max((t.get("trainable_parameters") or 0 for t in tasks), default=0)
    items = [
        ("run", str(manifest.get("run_id", ""))),
        ("status", str(manifest.get("status", ""))),
        ("learner", f"{first['learner']} ({learner.get('class', '?')})"),
        ("setting", f"{first['world']} {first['setting']} · order {first['order']}"),
        ("shots", str(first["shots"])),
        ("seed", str(first["seed"])),
        ("model", f"{first['model']} · {backbone.get('pretrained', '?')}"),
        ("trainable parameters", f"{trainable:,}"),
        ("wall time", f"{manifest.get('wall_time_s', '—')} s"),
        ("config hash", str(manifest.get("config_hash", ""))),
        (
            "versions",
            f"cl_bench {versions.get('cl_bench', '?')} · git {versions.get('git_sha', '?')}",
        ),
        ("hyperparameters", json.dumps(learner.get("config", {}), sort_keys=True)),
    ]
    return items


def _summary_section(acc: pd.DataFrame, status: str) -> list[str]:
    try:
        s = summarize(acc)
    except UserError as exc:  # an unfinished run: the plots below show the tasks done so far
        return [f'<p class="note">No summary yet (status {hp.esc(status)}): {hp.esc(str(exc))}</p>']
    header = ["dataset", "split", "Transfer", "Average", "Last", "Hold-out"]
    rows = [
        [
            r.dataset,
            r.split,
            _fmt(r.transfer),
            _fmt(r.average),
            _fmt(r.last),
            _fmt(r.holdout_transfer),
        ]
        for r in s.itertuples()
    ]
    classes = ["mean" if r.split == "mean" else "" for r in s.itertuples()]
    mean = s[s["split"] == "mean"].iloc[0]
    return [
        hp.table(header, rows, row_classes=classes),
        f'<p class="note">Gain {_fmt(mean["gain"])} · Forgetting {_fmt(mean["forgetting"])} · '
        "Transfer(j) = mean over tasks before j, Average(j) = mean over all tasks, "
        "Last(j) = after the last task; the zero-shot row is in no metric.</p>",
    ]


def _plot_sections(pngs: list[Path]) -> tuple[list[str], list[tuple[str, str]]]:
    """HTML sections of the plots, grouped by SECTIONS; and their (anchor, heading) links."""
    grouped: dict[tuple[str, str, str], list[Path]] = {}
    for png in pngs:
        key = next((s for s in SECTIONS if png.name.startswith(s[0])), OTHER)
        grouped.setdefault(key, []).append(png)
    body, links = [], []
    for key in [*SECTIONS, OTHER]:
        if key not in grouped:
            continue
        _, anchor, heading = key
        links.append((anchor, heading))
        body.append(f'<section id="{anchor}"><h2>{hp.esc(heading)}</h2>')
        body += [hp.figure(p, p.name) for p in grouped[key]]
        body.append("</section>")
    return body, links


def report_html(run_dir: Path, out: Path | None = None) -> Path:
    """Write the run's self-contained page to out/report.html (default RUN_DIR/plots)."""
    run_dir = Path(run_dir)
    manifest, acc = read_evaluated_run(run_dir)
    with tempfile.TemporaryDirectory(prefix="clbench-report-") as tmp:
        plots, links = _plot_sections(report_run(run_dir, Path(tmp)))  # read before tmp goes
    status = str(manifest.get("status", ""))
    first = acc.iloc[0]
    subtitle = (
        f"{first['learner']} · {first['world']} {first['setting']} · seed {first['seed']}"
        f" · {first['model']} · {status}"
    )
    body = [
        hp.nav([("run", "Run"), ("summary", "Summary"), *links]),
        '<section id="run"><h2>Run</h2>',
        hp.facts(_facts(manifest, acc)),
        "</section>",
        '<section id="summary"><h2>Summary (%)</h2>',
        *_summary_section(acc, status),
        "</section>",
        *plots,
    ]
    title = f"cl-bench run report: {manifest.get('run_id', run_dir.name)}"
    path = (Path(out) if out else run_dir / "plots") / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(hp.page(title, subtitle, body, "clbench-report"), encoding="utf-8")
    return path
