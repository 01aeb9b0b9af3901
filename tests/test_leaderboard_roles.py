"""Leaderboard grouping by learner role: reference rows join any training budget, hold-out
sets get their own tables, a hand-made manifest is skipped with one line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_leaderboard import BASE, BASE_HOLDOUT, make_run

from cl_bench.analysis.leaderboard import render_leaderboard
from cl_bench.errors import UserError


def patch(run_dir: Path, **changes: dict) -> Path:
    """Merge `changes` into the run's manifest tables (setting={...}, learner={...})."""
    path = run_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        manifest[key] = {**manifest.get(key, {}), **value}
    path.write_text(json.dumps(manifest))
    return run_dir


def rows(text: str) -> dict[tuple[str, str, str], dict[str, str]]:
    return {(r["table"], r["learner"], r["column"]): r for r in csv.DictReader(io.StringIO(text))}


ZS = np.tile(np.array([[10.0, 40.0, 50.0]]), (4, 1))


def test_zeroshot_at_any_budget_joins_finetune_at_20_iterations(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed in (0, 1):
        patch(make_run(root, "finetune", seed, BASE, BASE_HOLDOUT), setting={"iterations": 20})
    # an old manifest (no learner.role): zeroshot at the default budget, its own batch size
    patch(make_run(root, "zeroshot", 0, ZS, BASE_HOLDOUT, trainable=0), setting={"batch_size": 3})
    text, skipped = render_leaderboard([root], fmt="csv")
    assert skipped == []
    r = rows(text)
    assert r[("summary", "zeroshot", "Transfer")]["mark"] == ""  # shown, not ranked
    assert r[("summary", "zeroshot", "Transfer")]["mean"] == "45.0000"
    assert r[("summary", "finetune", "Last")]["seeds"] == "2"
    assert {line.split(",")[5] for line in text.splitlines()[1:]} == {"20"}  # iterations column
    # two budgets of a learner that trains are still two tables
    make_run(root, "alpha", 0, BASE, BASE_HOLDOUT)  # iterations 80
    with pytest.raises(UserError, match=r"iterations=20 \(2 runs\); iterations=80 \(1 run\)"):
        render_leaderboard([root])
    # and a zeroshot of another setting is still another table
    other = make_run(tmp_path / "o", "zeroshot", 1, ZS, BASE_HOLDOUT, setting="mtil", trainable=0)
    with pytest.raises(UserError, match="setting=mtil"):
        render_leaderboard([root / "toy-xtail-finetune-seed0", other])


def test_roles_come_from_the_manifest(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, "finetune", 0, BASE, BASE_HOLDOUT)
    make_run(root, "beta", 0, BASE - 5, BASE_HOLDOUT)
    # an upper bound: a reference row that still needs the same budget
    joint = make_run(root, "joint", 0, BASE + 20, BASE_HOLDOUT)
    patch(joint, learner={"role": "reference", "uses_training_budget": True})
    # a closed-form learner with no trainable parameters is ranked unless it says otherwise
    patch(
        make_run(root, "closed", 0, BASE + 1, BASE_HOLDOUT, trainable=0),
        learner={"role": "continual", "uses_training_budget": False},
        setting={"iterations": 5},
    )
    r = rows(render_leaderboard([root], fmt="csv")[0])
    assert r[("summary", "joint", "Last")]["mark"] == ""  # the best number, not ranked
    assert r[("summary", "closed", "Last")]["mark"] == "best"
    text, _ = render_leaderboard([root])
    table = text.split("### Mean")[1]
    assert table.index("| joint") < table.index("| beta")  # reference rows first
    patch(joint, setting={"iterations": 20})
    with pytest.raises(UserError, match="iterations=20"):
        render_leaderboard([root])


def test_each_holdout_set_gets_its_own_table(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, "alpha", 0, BASE, BASE_HOLDOUT)
    make_run(root, "alpha", 1, BASE, BASE_HOLDOUT + 2)
    fewer = make_run(root, "beta", 0, BASE, BASE_HOLDOUT)
    acc = pd.read_parquet(fewer / "accuracy.parquet")
    acc = acc[acc["eval_dataset"] != "places365"]  # --holdout cifar100
    acc.to_parquet(fewer / "accuracy.parquet", index=False)
    none = make_run(root, "gamma", 0, BASE, BASE_HOLDOUT)
    acc = pd.read_parquet(none / "accuracy.parquet")
    acc[acc["split"] == "stream"].to_parquet(none / "accuracy.parquet", index=False)
    r = rows(render_leaderboard([root], fmt="csv")[0])
    # alpha: cifar100 = mean(60, 58, 56) = 58 and 60 -> 59 over two seeds; beta alone
    assert r[("holdout-cifar100-places365", "alpha", "cifar100")]["mean"] == "59.0000"
    assert r[("holdout-cifar100-places365", "alpha", "mean")]["n"] == "2"
    assert r[("holdout-cifar100", "beta", "mean")]["mean"] == "58.0000"
    assert ("holdout-cifar100", "alpha", "mean") not in r
    assert not any(k[0].startswith("holdout") and k[1] == "gamma" for k in r)
    assert r[("summary", "gamma", "Last")]["n"] == "1"  # the stream tables keep every run


def test_a_hand_made_manifest_is_skipped_with_one_line(tmp_path: Path, capsys) -> None:
    from cl_bench.cli import main

    root = tmp_path / "runs"
    make_run(root, "alpha", 0, BASE, BASE_HOLDOUT)
    odd = make_run(root, "beta", 0, BASE, BASE_HOLDOUT)
    manifest = json.loads((odd / "manifest.json").read_text())
    (odd / "manifest.json").write_text(json.dumps({**manifest, "setting": "xtail"}))
    listed = make_run(root, "gamma", 0, BASE, BASE_HOLDOUT)
    (listed / "manifest.json").write_text("[1, 2]")
    main(["leaderboard", str(root)])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert "'setting' is a string, not a table" in err and "a list, not a cl-bench" in err
    assert "| alpha" in out and "| beta" not in out


@pytest.mark.slow  # two engine runs: ~30 s on a shared 2-core machine
def test_engine_runs_zeroshot_default_budget_and_finetune_at_20_iterations(
    tiny_run, tmp_path: Path, one_thread
) -> None:
    """The manifests the engine writes (learner.role, uses_training_budget) group as above."""
    tiny_run("zeroshot", out=tmp_path / "runs" / "zeroshot")  # the fixture's default budget
    tiny_run("finetune", out=tmp_path / "runs" / "finetune", iterations=20)
    text, skipped = render_leaderboard([tmp_path / "runs"], fmt="csv")
    assert skipped == []
    learners = {line.split(",")[8] for line in text.splitlines()[1:]}
    assert learners == {"zeroshot", "finetune"}
    assert {line.split(",")[5] for line in text.splitlines()[1:]} == {"20"}
