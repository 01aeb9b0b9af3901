"""clbench import: published matrices as run directories, metrics checked by hand."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cl_bench.analysis.importer import ZSCL_COLUMNS, import_matrix, read_matrix
from cl_bench.analysis.leaderboard import render_leaderboard
from cl_bench.analysis.results import (
    ACCURACY_COLUMNS,
    read_manifest,
    read_parquet,
    write_json,
    write_parquet,
)
from cl_bench.engine.settings import resolve_setting
from cl_bench.errors import UserError

BEFORE, ON, AFTER = 50.0, 90.0, 70.0  # acc[t, j] for t < j, t == j, t > j (task order)


def mtil(order: str = "I") -> dict:
    return asdict(resolve_setting("mtil", "real", order))


def task_matrix(num_tasks: int) -> np.ndarray:
    """Rows after tasks 1..T, columns the stream in task order."""
    t = np.arange(1, num_tasks + 1)[:, None]
    j = np.arange(1, num_tasks + 1)[None, :]
    return np.where(t < j, BEFORE, np.where(t == j, ON, AFTER)).astype(np.float64)


def zscl_file(path: Path, stream: list[str]) -> Path:
    """The task-order matrix laid out as ZSCL's mtil/results/*.npy: 11 x 12 flattened; rows and
    columns in ZSCL's evaluation list (order I's datasets with CIFAR10 third), CIFAR10 junk."""
    acc = task_matrix(len(stream))
    table = np.full((11, 12), 3.0)  # the CIFAR10 column; dropped by the import
    kept = [n for n in ZSCL_COLUMNS if n != "cifar10"]
    for r, row_name in enumerate(kept):
        for c, col_name in enumerate(ZSCL_COLUMNS):
            if col_name != "cifar10":
                table[r, c] = acc[stream.index(row_name), stream.index(col_name)]
    np.save(path, table.reshape(-1))
    return path


# Hand computation for T = 11: Transfer(j) = 50 for every j >= 2; Average(j) =
# ((j-1)*50 + 90 + (11-j)*70) / 11, whose mean over j is (55*50 + 11*90 + 55*70) / 121 = 690/11;
# Last = (10*70 + 90) / 11 = 790/11; forgetting = mean_{j<11} (90 - 70) = 20; no gain.
EXPECTED = {"transfer": 50.0, "average": 690 / 11, "last": 790 / 11, "forgetting": 20.0}


@pytest.mark.parametrize("order", ["I", "II"])
def test_zscl_npy_imports_with_hand_computed_metrics(tmp_path: Path, order: str) -> None:
    setting = mtil(order)
    src = zscl_file(tmp_path / "t.npy", list(setting["datasets"]))
    run_dir = import_matrix(
        src, setting, learner="zscl", source="ZSCL Table 3", model="ViT-B-16",
        pretrained="openai", out=tmp_path / "run", layout="zscl",
    )  # fmt: skip
    summary = read_parquet(run_dir / "summary.parquet").set_index("dataset")
    mean = summary.loc["mean"]
    for metric, value in EXPECTED.items():
        assert mean[metric] == pytest.approx(value), metric
    assert math.isnan(mean["gain"])  # no zero-shot row: nothing invented
    assert summary.loc[setting["datasets"][0], "last"] == pytest.approx(AFTER)
    acc = read_parquet(run_dir / "accuracy.parquet")
    assert list(acc.columns) == ACCURACY_COLUMNS and acc["after_task"].min() == 1
    assert "cifar10" not in set(acc["eval_dataset"])
    manifest = read_manifest(run_dir)
    imported = manifest["imported"]
    assert imported["source"] == "ZSCL Table 3" and len(imported["sha256"]) == 64
    assert imported["zero_shot_row"] is False and manifest["status"] == "finished"
    assert manifest["learner"]["role"] == "continual"


def test_real_zscl_file_layout_matches_the_notebook(tmp_path: Path) -> None:
    """A (row, column) cell of the flat record lands where ZSCL's notebook puts it."""
    flat = np.arange(132, dtype=np.float64) / 2 + 10  # distinct values, 10 .. 75.5
    np.save(tmp_path / "f.npy", flat)
    m = read_matrix(tmp_path / "f.npy", mtil("II")["datasets"], layout="zscl")
    notebook = np.delete(flat.reshape(11, -1), 2, axis=1)
    order = [9, 6, 7, 8, 5, 10, 0, 1, 3, 4, 2]  # mtil/results.ipynb, statistics(order=2)
    assert np.array_equal(m.stream[1:], notebook[:, order][order, :])
    assert np.isnan(m.stream[0]).all()


def test_csv_with_zero_shot_row_and_holdout_gives_gain(tmp_path: Path) -> None:
    setting = asdict(resolve_setting("xtail", "real"))
    stream = list(setting["datasets"])
    acc = task_matrix(len(stream))
    zero = np.full(len(stream), 40.0)
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["after_task", *reversed(stream), "Places365"])  # any column order, any case
        for t in [*range(len(stream), 0, -1), 0]:  # rows in any order
            row = zero if t == 0 else acc[t - 1]
            w.writerow([t, *(row[::-1] / 100), (60 + t) / 100])
    run_dir = import_matrix(
        path, setting, learner="rail", source="RAIL Table 1", model="ViT-B-16",
        pretrained="openai", out=tmp_path / "run", scale="fraction",
    )  # fmt: skip
    summary = read_parquet(run_dir / "summary.parquet").set_index("dataset")
    assert summary.loc["mean", "gain"] == pytest.approx(ON - 40.0)  # acc[j, j] - acc[0, j]
    assert summary.loc["mean", "transfer"] == pytest.approx(BEFORE)
    # hold-out transfer: mean over t = 1..10 of 60 + t = 65.5
    assert summary.loc["places365", "holdout_transfer"] == pytest.approx(65.5)


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    stream = mtil()["datasets"]
    cases = {
        "flat.npy": (np.zeros(132) + 5, "--layout zscl"),
        "cols.npy": (np.zeros((11, 10)) + 5, "10 columns"),
        "rows.npy": (np.zeros((9, 11)) + 5, "9 rows"),
        "frac.npy": (np.full((11, 11), 0.5), "--scale fraction"),
        "big.npy": (np.full((11, 11), 150.0), "outside 0..100"),
        "hole.npy": (np.where(np.eye(11) > 0, np.nan, 5.0), "no value after task 1"),
        "obj.npy": (np.array([{"a": 1}], dtype=object), "not a numeric"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array, allow_pickle=True)
        with pytest.raises(UserError, match=message) as err:
            read_matrix(tmp_path / name, stream)
        assert "\n" not in str(err.value), name
    (tmp_path / "u.csv").write_text("after_task,aircraft,cifar10\n1,5,5\n")
    with pytest.raises(UserError, match=r"unknown column\(s\) \['cifar10'\]"):
        read_matrix(tmp_path / "u.csv", stream)
    with pytest.raises(UserError, match="use --setting mtil"):
        read_matrix(tmp_path / "flat.npy", stream[:10], layout="zscl")


def fake_user_run(root: Path, learner: str, world: str, acc: np.ndarray, stream: list[str]) -> Path:
    """A finished run dir as the engine writes it (rows 0..T), iterations 1000, fp16."""
    run_dir = root / f"{world}-mtil-{learner}-seed0"
    model = "ViT-B-16" if world == "real" else "toy-clip"
    ident = {"run_id": run_dir.name, "setting": "mtil", "world": world, "model": model,
             "learner": learner, "seed": 0, "order": "I", "shots": 0}  # fmt: skip
    rows = [
        {**ident, "after_task": t, "after_task_name": "zeroshot" if t == 0 else stream[t - 1],
         "eval_dataset": n, "split": "stream", "correct": 1, "total": 2, "accuracy": acc[t, j]}
        for t in range(len(stream) + 1)
        for j, n in enumerate(stream)
    ]  # fmt: skip
    write_parquet(pd.DataFrame(rows, columns=ACCURACY_COLUMNS), run_dir / "accuracy.parquet")
    manifest = {
        "status": "finished",
        "config": {"overrides": {}, "eval_limit": None, "precision": "fp16"},
        "setting": {"iterations": 1000, "batch_size": 64, "datasets": stream},
        "learner": {"name": learner, "role": "continual", "uses_training_budget": True},
        "backbone": {"name": model, "pretrained": "openai" if world == "real" else "toy"},
        "tasks": [{"task": 1, "trainable_parameters": 10, "train_time_s": 1.0}],
    }
    write_json(manifest, run_dir / "manifest.json")
    return run_dir


def test_imported_rows_join_real_runs_with_their_source_never_toy_runs(tmp_path: Path) -> None:
    from cl_bench.cli import main

    setting = mtil()
    stream = list(setting["datasets"])
    src = zscl_file(tmp_path / "t3_7.npy", stream)
    main(["import", str(src), "--setting", "mtil", "--order", "I", "--learner", "zscl",
          "--layout", "zscl", "--source", "ZSCL repo mtil/results/t3_7.npy",
          "--out", str(tmp_path / "runs" / "zscl-imported")])  # fmt: skip
    user = np.vstack([np.full(len(stream), 40.0), task_matrix(len(stream)) - 10])
    fake_user_run(tmp_path / "runs", "finetune", "real", user, stream)
    text, skipped = render_leaderboard([tmp_path / "runs"], fmt="csv")
    assert skipped == []
    rows = {(r["table"], r["learner"], r["column"]): r for r in csv.DictReader(io.StringIO(text))}
    label = "zscl (imported: ZSCL repo mtil/results/t3_7.npy)"
    assert float(rows[("summary", label, "Last")]["mean"]) == pytest.approx(790 / 11, abs=1e-4)
    assert rows[("summary", label, "Gain")]["mean"] == ""  # empty, not "nan"
    assert rows[("summary", label, "Last")]["mark"] == "best"  # ranked with the user's runs
    assert float(rows[("summary", "finetune", "Gain")]["mean"]) == pytest.approx(40.0)
    assert rows[("cost", label, "train time (s)")]["mean"] == ""  # nothing was measured
    markdown, _ = render_leaderboard([tmp_path / "runs"])
    line = next(li for li in markdown.splitlines() if li.startswith(f"| {label}"))
    assert "nan" not in line and "—" in line
    fake_user_run(tmp_path / "toy", "finetune", "toy", user, stream)
    with pytest.raises(UserError, match=r"world=real.*world=toy"):
        render_leaderboard([tmp_path / "runs", tmp_path / "toy"])


def test_cli_import_refuses_an_existing_dir_and_a_flat_file_without_layout(
    tmp_path: Path, capsys
) -> None:
    from cl_bench.cli import main

    src = zscl_file(tmp_path / "t.npy", list(mtil()["datasets"]))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    for extra in (
        ["--out", str(tmp_path / "out"), "--layout", "zscl"],
        ["--out", str(tmp_path / "n")],
    ):
        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "import",
                    str(src),
                    "--setting",
                    "mtil",
                    "--learner",
                    "zscl",
                    "--source",
                    "s",
                    *extra,
                ]
            )
        assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not empty" in err[0] and "--layout zscl" in err[1]
    assert not (tmp_path / "n").exists()
