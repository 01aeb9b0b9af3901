"""`clbench report` / `clbench compare`: the PNGs each run supports are written and non-empty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_leaderboard import BASE, BASE_HOLDOUT, STREAM, make_run

from cl_bench.analysis.report import compare_runs, report_run
from cl_bench.analysis.results import write_parquet
from cl_bench.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_pngs(paths: list[Path], names: set[str]) -> None:
    assert {p.name for p in paths} == names
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000, p


def site_rows(rng: np.random.Generator) -> list[dict]:
    rows = []
    for t, name in enumerate(STREAM, start=1):
        for encoder, layers in (("vision", 4), ("text", 3)):
            for layer in range(layers):
                for kind in ("q", "k", "v", "out", "fc", "proj"):
                    rows.append(
                        {
                            "after_task": t,
                            "task": name,
                            "encoder": encoder,
                            "layer": layer,
                            "kind": kind,
                        }
                    )
    return rows


def test_report_writes_every_plot_the_run_supports(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "drslora", 0, BASE, BASE_HOLDOUT)
    rng = np.random.default_rng(0)
    ranks = pd.DataFrame(site_rows(rng))
    ranks["rank"] = 3
    ranks["surviving"] = rng.integers(0, 4, len(ranks))
    write_parquet(ranks, run_dir / "ranks.parquet")
    gates = pd.DataFrame(site_rows(rng))
    gates["score"] = rng.uniform(0, 0.2, len(gates))
    gates["active"] = gates["score"] >= 0.1
    write_parquet(gates, run_dir / "gates.parquet")
    selected = pd.DataFrame(site_rows(rng))  # clip_ast's columns (learners/clip_ast.py select)
    selected["importance"] = rng.uniform(0, 1, len(selected))
    selected["importance_rank"] = selected.groupby(["after_task", "encoder", "layer"])[
        "importance"
    ].rank(ascending=False)
    selected["selected"] = selected["importance_rank"] <= 3
    selected["numel"] = 128
    write_parquet(selected, run_dir / "selected.parquet")
    log = pd.DataFrame(
        {"task": np.repeat([1, 2, 3], 8), "step": np.tile(np.arange(10, 90, 10), 3)}
    ).assign(loss=lambda d: 3.0 - d["step"] / 100, kappa=0.001)
    write_parquet(log, run_dir / "train_log.parquet")
    paths = report_run(run_dir, tmp_path / "plots")
    assert_pngs(
        paths,
        {
            "accuracy_matrix.png",
            "accuracy_stream.png",
            "train_curves.png",
            "ranks_allocation.png",
            "ranks_surviving.png",
            "gates_active_blocks.png",
            "gates_active_fraction.png",
            "selected_tensors.png",
            "selected_fraction.png",
        },
    )


def test_report_of_a_real_drslora_run(tmp_path: Path) -> None:
    """The learner's own ranks.parquet columns are the ones the plots read."""
    import torch
    from fakeworld import FakeWorld

    from cl_bench.engine.config import RunConfig
    from cl_bench.engine.loop import run

    torch.set_num_threads(1)
    out = tmp_path / "run"
    run(RunConfig(learner="drslora", iterations=3, max_tasks=2, out=str(out)), world=FakeWorld())
    paths = report_run(out)
    assert all(p.parent == out / "plots" for p in paths)
    assert_pngs(
        paths,
        {
            "accuracy_matrix.png",
            "accuracy_stream.png",
            "train_curves.png",
            "ranks_allocation.png",
            "ranks_surviving.png",
            "domains.png",  # X-TAIL: cross-domain confusion from domains.parquet
        },
    )


def test_domain_shares_against_a_hand_computed_table() -> None:
    from cl_bench.analysis.report import domain_shares

    rows = [  # (after_task, eval_dataset, predicted_domain, count)
        (0, "a", "a", 6), (0, "a", "b", 2), (0, "b", "a", 1), (0, "b", "b", 3),
        (1, "a", "a", 8), (1, "a", "b", 0), (1, "b", "a", 4), (1, "b", "b", 0),
    ]  # fmt: skip
    domains = pd.DataFrame(
        rows, columns=["after_task", "eval_dataset", "predicted_domain", "count"]
    )
    mat, names = domain_shares(domains, 0)
    assert names == ["a", "b"]
    np.testing.assert_allclose(mat, [[75.0, 25.0], [25.0, 75.0]])
    mat, _ = domain_shares(domains, 1)
    np.testing.assert_allclose(mat, [[100.0, 0.0], [100.0, 0.0]])


def test_report_of_an_unfinished_run_and_compare(tmp_path: Path) -> None:
    partial = make_run(tmp_path / "p", "finetune", 0, BASE, BASE_HOLDOUT, status="running")
    acc = pd.read_parquet(partial / "accuracy.parquet")
    write_parquet(acc[acc["after_task"] <= 1], partial / "accuracy.parquet")
    assert_pngs(report_run(partial), {"accuracy_matrix.png", "accuracy_stream.png"})

    runs = tmp_path / "runs"
    for seed in (0, 1):
        make_run(runs, "alpha", seed, BASE + seed, BASE_HOLDOUT)
        make_run(runs, "beta", seed, BASE - 5 * seed, BASE_HOLDOUT)
    path, skipped = compare_runs([runs], tmp_path / "cmp" / "compare.png")
    assert skipped == [] and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000
    make_run(runs, "alpha", 7, BASE, BASE_HOLDOUT, world="real")
    with pytest.raises(UserError, match="--world"):
        compare_runs([runs], tmp_path / "x.png")


def test_cli_report(tmp_path: Path, capsys) -> None:
    from cl_bench.cli import main

    run_dir = make_run(tmp_path, "finetune", 0, BASE, BASE_HOLDOUT)
    main(["report", str(run_dir), "--out", str(tmp_path / "pngs")])
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == ["accuracy_matrix.png", "accuracy_stream.png"]
    assert all(Path(p).stat().st_size > 0 for p in printed)
