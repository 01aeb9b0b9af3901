"""`clbench report --html` and `clbench leaderboard --format html`: one self-contained page
each (no external resource, no script), every section the run supports, text escaped.
The browser-side checks are in test_html_browser.py."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_leaderboard import BASE, BASE_HOLDOUT, STREAM, make_run
from test_report import PNG_MAGIC

from cl_bench.analysis.leaderboard import render_leaderboard
from cl_bench.analysis.plots import compare_bars
from cl_bench.analysis.report_html import report_html
from cl_bench.analysis.results import write_parquet
from cl_bench.analysis.tables import Board, Cell, Column, Row, Table

ATTR = re.compile(r"""\b(?:src|href)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)


def external_refs(text: str) -> list[str]:
    """src/href values that are neither an embedded PNG nor an in-page anchor."""
    tags = re.findall(r"<[^>]*>", text)  # escaped text has no raw "<"
    values = ["".join(m) for tag in tags for m in ATTR.findall(tag)]
    return [v for v in values if not v.startswith(("data:image/png;base64,", "#"))]


def assert_self_contained(text: str) -> list[bytes]:
    """No fetched resource, no script; returns the embedded PNGs (each must decode)."""
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<style>" in text and "<link" not in text.lower() and "<script" not in text.lower()
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert external_refs(text) == []  # every src/href is a data URI or an in-page anchor
    pngs = [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]
    assert pngs and all(p[:8] == PNG_MAGIC and len(p) > 5_000 for p in pngs)
    return pngs


def section_ids(text: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', text)


def test_the_url_check_catches_external_references() -> None:
    bad = """<img src="x.png"><a href='https://e.org'><link href=s.css>"""
    assert external_refs(bad) == ["x.png", "https://e.org", "s.css"]
    assert external_refs('<img src="data:image/png;base64,AAAA"><a href="#summary">') == []


def test_report_of_a_real_drslora_run(tiny_run, one_thread) -> None:
    """Summary, matrix, curves, training curves, ranks and X-TAIL's cross-domain confusion."""
    engine = tiny_run("drslora")
    run_dir = Path(engine.cfg.out)
    page = report_html(run_dir)
    assert page == run_dir / "plots" / "report.html"
    text = page.read_text(encoding="utf-8")
    pngs = assert_self_contained(text)
    assert section_ids(text) == ["run", "summary", "matrix", "curves", "training", "ranks", "domains"]  # fmt: skip
    assert len(pngs) == 6  # matrix, stream curves, train curves, 2 rank plots, domains
    assert not (run_dir / "plots" / "accuracy_matrix.png").exists()  # only the page is written
    summary = text[text.index('id="summary"') : text.index('id="matrix"')]
    assert summary.count("<tr") == 1 + 2 + 3 + 1  # header, 2 stream, 3 hold-out, mean
    assert 'class="mean"' in summary and "Forgetting" in summary


def test_report_sections_for_gates_and_selections(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "gated_lora", 0, BASE, BASE_HOLDOUT)
    sites = pd.DataFrame(  # gated_lora's / clip_ast's columns, two sites per task
        [
            {"after_task": t, "task": name, "encoder": "vision", "layer": 0, "kind": kind}
            for t, name in enumerate(STREAM, start=1)
            for kind in ("q", "fc")
        ]
    )
    active = np.arange(len(sites)) % 2 == 0
    write_parquet(sites.assign(score=0.05 + 0.1 * active, active=active), run_dir / "gates.parquet")
    selected = sites.assign(importance_rank=1.0 + ~active, selected=active)
    write_parquet(selected, run_dir / "selected.parquet")
    text = report_html(run_dir, tmp_path / "out").read_text(encoding="utf-8")
    assert len(assert_self_contained(text)) == 6
    assert section_ids(text) == ["run", "summary", "matrix", "curves", "gates", "selected"]
    for name in ("gates_active_blocks.png", "gates_active_fraction.png", "selected_tensors.png"):
        assert f"<figcaption>{name}</figcaption>" in text


def test_names_from_run_dirs_are_escaped(tmp_path: Path) -> None:
    evil = "<img src=x onerror=alert(1)>"
    run_dir = make_run(tmp_path / "runs", evil, 0, BASE, BASE_HOLDOUT)
    acc = pd.read_parquet(run_dir / "accuracy.parquet")
    for col in ("eval_dataset", "after_task_name"):
        acc[col] = acc[col].replace("dtd", "d<b>t</b>d")
    write_parquet(acc, run_dir / "accuracy.parquet")
    make_run(tmp_path / "runs", "finetune", 0, BASE - 3, BASE_HOLDOUT)
    report = report_html(run_dir, tmp_path / "out").read_text(encoding="utf-8")
    board, _ = render_leaderboard([tmp_path / "runs"], fmt="html")
    for text in (report, board):
        assert_self_contained(text)
        assert evil not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "d<b>t</b>d" not in report and "d&lt;b&gt;t&lt;/b&gt;d" in report


def test_cli_report_html_of_an_unfinished_run(tmp_path: Path, capsys) -> None:
    from cl_bench.cli import main

    run_dir = make_run(tmp_path, "finetune", 0, BASE, BASE_HOLDOUT, status="running")
    acc = pd.read_parquet(run_dir / "accuracy.parquet")
    write_parquet(acc[acc["after_task"] <= 1], run_dir / "accuracy.parquet")
    main(["report", str(run_dir), "--html", "--out", str(tmp_path / "html")])
    page = tmp_path / "html" / "report.html"
    assert capsys.readouterr().out.split() == [str(page)]
    text = page.read_text(encoding="utf-8")
    assert len(assert_self_contained(text)) == 2 and list((tmp_path / "html").iterdir()) == [page]
    assert "No summary yet (status running)" in text and "incomplete" in text


def test_html_leaderboard_page(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in (0, 1):
        make_run(runs, "alpha", seed, BASE + seed, BASE_HOLDOUT)
        make_run(runs, "beta", seed, BASE - 5 * seed, BASE_HOLDOUT)
        make_run(runs, "zeroshot", seed, np.tile(BASE[:1], (4, 1)), BASE_HOLDOUT, trainable=0)
    text, _ = render_leaderboard([runs], fmt="html")
    assert len(assert_self_contained(text)) == 1  # the compare chart
    assert section_ids(text) == ["compare", "summary", "holdout", "cost"]
    assert text.count('<tr class="reference">') == 3  # zeroshot in each table, never marked
    assert "<b>" in text and "<u>" not in text  # 2 ranked learners: best only (3 for second)
    per_dataset, _ = render_leaderboard([runs], fmt="html", per_dataset=True)
    assert len(assert_self_contained(per_dataset)) == 1  # bars from the tables' mean columns
    transfer, _ = render_leaderboard([runs], fmt="html", metric="transfer")
    assert section_ids(transfer) == ["compare", "summary", "holdout", "cost"]


def test_compare_bars_against_a_hand_built_board() -> None:
    def row(label: str, *means: float) -> Row:
        return Row(label, 2, [Cell(m, 1.0, 2) for m in means], reference=False)

    cols = [Column(n) for n in ("Transfer", "Average", "Last", "Gain")]
    summary = Table("summary", "s", cols, [row("a", 1, 2, 3, 4), row("b", 5, 6, 7, 8)])
    holdout = Table("holdout", "h", [Column("x"), Column("mean")], [row("a", 9, 10), row("b", 11, 12)])  # fmt: skip
    cost = Table("cost", "c", [Column("time", "seconds")], [row("a", 1), row("b", 2)])
    groups, rows = compare_bars(Board({}, 4, [summary, holdout, cost]))
    assert groups == ["Transfer", "Average", "Last", "Hold-out"]
    assert [(label, [c.mean for c in cells]) for label, _, cells in rows] == [
        ("a", [1, 2, 3, 10]),
        ("b", [5, 6, 7, 12]),
    ]
    gain = Table("gain", "g", [Column("d"), Column("mean")], [row("a", 1, 2)])
    assert compare_bars(Board({}, 2, [gain])) == ([], [])
    per_metric = Table("last", "l", [Column("d"), Column("mean")], [row("a", 1, math.pi)])
    groups, rows = compare_bars(Board({}, 2, [per_metric]))
    assert groups == ["Last"] and rows[0][2][0].mean == pytest.approx(math.pi)
