"""Leaderboard numbers against hand-computed PROTOCOL.md §1 values on fabricated runs."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cl_bench.analysis.leaderboard import render_leaderboard
from cl_bench.analysis.results import ACCURACY_COLUMNS, write_json, write_parquet
from cl_bench.errors import UserError

STREAM = ["aircraft", "caltech101", "dtd"]
HOLDOUT = ["cifar100", "places365"]
# Rows t = 0 (zero-shot) .. 3, columns in task order.
BASE = np.array(
    [
        [10.0, 20.0, 30.0],
        [50.0, 22.0, 32.0],
        [40.0, 60.0, 34.0],
        [35.0, 55.0, 70.0],
    ]
)
BASE_HOLDOUT = np.array([[57.0, 30.0], [60.0, 31.0], [58.0, 32.0], [56.0, 33.0]])


def make_run(
    root: Path,
    learner: str,
    seed: int,
    stream: np.ndarray,
    holdout: np.ndarray,
    *,
    setting: str = "xtail",
    world: str = "toy",
    trainable: int = 1_500_000,
    train_time_s: float = 2.0,
    status: str = "finished",
    overrides: dict[str, str] | None = None,
) -> Path:
    """A run dir written with the results helpers, as the engine would leave it."""
    run_dir = root / f"{world}-{setting}-{learner}-seed{seed}"
    rows = []
    ident = {
        "run_id": run_dir.name,
        "setting": setting,
        "world": world,
        "model": "toy-clip",
        "learner": learner,
        "seed": seed,
        "order": "I",
        "shots": 16,
    }
    for t in range(len(STREAM) + 1):
        after = "zeroshot" if t == 0 else STREAM[t - 1]
        for names, mat, split in ((STREAM, stream, "stream"), (HOLDOUT, holdout, "holdout")):
            for j, name in enumerate(names):
                rows.append(
                    {
                        **ident,
                        "after_task": t,
                        "after_task_name": after,
                        "eval_dataset": name,
                        "split": split,
                        "correct": 0,
                        "total": 100,
                        "accuracy": float(mat[t, j]),
                    }
                )
    write_parquet(pd.DataFrame(rows, columns=ACCURACY_COLUMNS), run_dir / "accuracy.parquet")
    manifest = {
        "status": status,
        "config": {"overrides": overrides or {}, "eval_limit": None, "seed": seed},
        "setting": {"iterations": 80, "datasets": STREAM},
        "backbone": {"name": "toy-clip", "pretrained": "toy", "parameters": 7_000_000},
        "tasks": [
            {
                "task": t + 1,
                "trainable_parameters": trainable,
                "train_time_s": train_time_s,
                "eval_time_s": 0.5,
                "peak_rss_mb": 900.0 + seed,
                "peak_cuda_mb": None,
            }
            for t in range(len(STREAM))
        ],
        "extra_inference_parameters": 0,
        "wall_time_s": 10.0,
        "peak_rss_mb": 1000.0 + 10 * seed,
    }
    write_json(manifest, run_dir / "manifest.json")
    return run_dir


def shifted(mat: np.ndarray, rows: slice, delta: float) -> np.ndarray:
    out = mat.copy()
    out[rows] += delta
    return out


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    # alpha: three seeds that differ only in the last row (+0, +3, +9) and one hold-out cell.
    for seed, delta in ((0, 0.0), (1, 3.0), (2, 9.0)):
        hold = BASE_HOLDOUT.copy()
        hold[3, 0] += 3 * seed
        make_run(root, "alpha", seed, shifted(BASE, slice(3, 4), delta), hold)
    # beta: 10 points lower after every task, two identical seeds.
    for seed in (0, 1):
        make_run(root, "beta", seed, shifted(BASE, slice(1, 4), -10.0), BASE_HOLDOUT)
    # gamma: 5 points lower, one seed (no std).
    make_run(root, "gamma", 0, shifted(BASE, slice(1, 4), -5.0), BASE_HOLDOUT)
    # zeroshot: identical rows with a better Transfer than anyone; a reference, never ranked.
    zs = np.tile(np.array([[10.0, 40.0, 50.0]]), (4, 1))
    make_run(root, "zeroshot", 0, zs, np.tile(BASE_HOLDOUT[:1], (4, 1)), trainable=0)
    return root


def table_rows(text: str) -> dict[tuple[str, str, str], dict[str, str]]:
    return {(r["table"], r["learner"], r["column"]): r for r in csv.DictReader(io.StringIO(text))}


def test_numbers_equal_protocol_formulas_with_std_over_seeds(runs: Path) -> None:
    text, skipped = render_leaderboard([runs], fmt="csv", per_dataset=True)
    assert skipped == []
    rows = table_rows(text)

    def value(table: str, learner: str, column: str) -> tuple[float, float, int]:
        r = rows[(table, learner, column)]
        std = float(r["std"]) if r["std"] else math.nan
        return float(r["mean"]), std, int(r["n"])

    # Transfer(caltech101) = acc[1, cal] = 22; Transfer(dtd) = (32 + 34) / 2 = 33; mean 27.5.
    assert value("transfer", "alpha", "caltech101") == pytest.approx((22.0, 0.0, 3))
    assert value("transfer", "alpha", "dtd") == pytest.approx((33.0, 0.0, 3))
    assert value("transfer", "alpha", "mean") == pytest.approx((27.5, 0.0, 3))
    assert rows[("transfer", "alpha", "aircraft")]["mean"] == ""  # dataset 1 has no Transfer
    # Last mean per seed: 53.33, 56.33, 62.33 -> mean 57.33, std sqrt(21) (ddof = 1).
    assert value("last", "alpha", "mean") == pytest.approx((57.3333, math.sqrt(21), 3), abs=1e-4)
    assert value("last", "alpha", "dtd") == pytest.approx((74.0, math.sqrt(21), 3), abs=1e-4)
    # Average(aircraft) per seed: (50 + 40 + 35 + d) / 3 for d = 0, 3, 9.
    avg = [(125.0 + d) / 3 for d in (0.0, 3.0, 9.0)]
    assert value("average", "alpha", "aircraft") == pytest.approx(
        (np.mean(avg), np.std(avg, ddof=1), 3), abs=1e-4
    )
    # Gain = mean(50-10, 60-20, 70+d-30); forgetting = mean(50-(35+d), 60-(55+d)).
    gains = [(40 + 40 + 40 + d) / 3 for d in (0.0, 3.0, 9.0)]
    forgets = [(15 - d + 5 - d) / 2 for d in (0.0, 3.0, 9.0)]
    assert value("gain", "alpha", "mean") == pytest.approx(
        (np.mean(gains), np.std(gains, ddof=1), 3), abs=1e-4
    )
    assert value("forgetting", "alpha", "mean") == pytest.approx(
        (np.mean(forgets), np.std(forgets, ddof=1), 3), abs=1e-4
    )
    # Hold-out: cifar100 = mean(60, 58, 56 + 3 s) -> 58, 59, 60.
    assert value("holdout", "alpha", "cifar100") == pytest.approx((59.0, 1.0, 3), abs=1e-4)
    assert value("holdout", "alpha", "places365") == pytest.approx((32.0, 0.0, 3))
    assert value("holdout", "alpha", "mean") == pytest.approx((45.5, 0.5, 3), abs=1e-4)
    # One seed: no std; zero-shot: Transfer = Average = Last = its zero-shot accuracies.
    assert value("last", "gamma", "mean")[2] == 1 and rows[("last", "gamma", "mean")]["std"] == ""
    for metric in ("transfer", "average", "last"):
        assert value(metric, "zeroshot", "dtd")[0] == pytest.approx(50.0)


def test_cost_table_comes_from_manifests(runs: Path) -> None:
    rows = table_rows(render_leaderboard([runs], fmt="csv")[0])
    assert float(rows[("cost", "alpha", "trainable params (max per task)")]["mean"]) == 1_500_000
    assert float(rows[("cost", "alpha", "train time (s)")]["mean"]) == pytest.approx(6.0)
    # peak RSS per run = max(manifest, tasks) = 1000 + 10 s for seeds 0, 1, 2.
    rss = rows[("cost", "alpha", "peak RSS (MB)")]
    assert float(rss["mean"]) == pytest.approx(1010.0) and float(rss["std"]) == pytest.approx(10.0)
    assert float(rows[("cost", "zeroshot", "extra inference params")]["mean"]) == 0


def test_cost_table_stored_data_from_the_learners_note(runs: Path) -> None:
    """`RunContext.note_stored_data` -> derived.stored_data -> "stored data (MB)"; a learner
    that noted nothing stores nothing (0, not an empty cell)."""
    from cl_bench.analysis.leaderboard import STORED_DATA_KEY
    from cl_bench.api.context import STORED_DATA_KEY as API_KEY
    from cl_bench.api.context import RunContext

    assert STORED_DATA_KEY == API_KEY
    for seed, mb in ((0, 1.5), (1, 2.5), (2, 3.5)):
        ctx = RunContext.__new__(RunContext)
        ctx.derived = {}
        ctx.note_stored_data(10 * seed, mb, "exemplar images")
        path = runs / f"toy-xtail-alpha-seed{seed}" / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["derived"] = ctx.derived
        path.write_text(json.dumps(manifest))
    rows = table_rows(render_leaderboard([runs], fmt="csv")[0])
    stored = rows[("cost", "alpha", "stored data (MB)")]
    assert float(stored["mean"]) == pytest.approx(2.5) and float(stored["std"]) == pytest.approx(
        1.0
    )
    assert float(rows[("cost", "beta", "stored data (MB)")]["mean"]) == 0
    text = render_leaderboard([runs])[0]
    assert "2.50 ± 1.00" in section_rows(text, "Cost")["alpha"]
    assert "| 0 " in section_rows(text, "Cost")["beta"]  # nothing stored: a plain 0


def section_rows(text: str, title: str) -> dict[str, str]:
    """Markdown table lines of one block, keyed by learner."""
    block = text.split(f"### {title}")[1].split("###")[0]
    return {
        line.split("|")[1].strip(): line for line in block.splitlines() if line.startswith("| ")
    }


def test_markdown_marks_best_and_second_and_skips_reference(runs: Path) -> None:
    text, _ = render_leaderboard([runs], metric="last", per_dataset=True)
    lines = section_rows(text, "Last")
    # Last mean: alpha 57.3 (best), gamma 48.3 (second), beta 43.3.
    assert "**57.3 ± 4.6**" in lines["alpha"]
    assert "<u>48.3</u>" in lines["gamma"]
    assert "| 43.3 ± 0.0 " in lines["beta"] and "**" not in lines["beta"]
    assert "**" not in lines["zeroshot"] and "<u>" not in lines["zeroshot"]
    # Reference rows first, then sorted labels.
    order = [k for k in lines if k in ("alpha", "beta", "gamma", "zeroshot")]
    assert order[:4] == ["zeroshot", "alpha", "beta", "gamma"]
    transfer, _ = render_leaderboard([runs], metric="transfer")
    alpha = section_rows(transfer, "Mean over")["alpha"]
    assert "**27.5 ± 0.0**" in alpha  # zeroshot's 45.0 is higher but not ranked


def test_output_is_deterministic_for_every_format(runs: Path) -> None:
    dirs = sorted(runs.iterdir())
    for fmt in ("markdown", "latex", "csv", "html"):
        a, _ = render_leaderboard([runs], fmt=fmt, per_dataset=True)
        b, _ = render_leaderboard(list(reversed(dirs)), fmt=fmt, per_dataset=True)
        assert a == b and a.endswith("\n")
    latex, _ = render_leaderboard([runs], fmt="latex", metric="last")
    assert r"\textbf{57.3 $\pm$ 4.6}" in latex and r"\underline{48.3}" in latex
    html, _ = render_leaderboard([runs], fmt="html", metric="last")
    assert "<b>57.3 ± 4.6</b>" in html and "<u>48.3</u>" in html


def test_refuses_to_mix_worlds_and_settings(runs: Path, tmp_path: Path) -> None:
    make_run(runs, "alpha", 5, BASE, BASE_HOLDOUT, world="real")
    with pytest.raises(UserError, match=r"world=real.*world=toy.*--world"):
        render_leaderboard([runs])
    text, _ = render_leaderboard([runs], world="toy", fmt="csv")
    assert ",alpha,3," in text  # the real-world run is filtered out, not averaged in
    other = tmp_path / "other"
    make_run(other, "alpha", 0, BASE, BASE_HOLDOUT, setting="mtil")
    with pytest.raises(UserError, match=r"setting=mtil.*setting=xtail.*--setting"):
        render_leaderboard([runs, other], world="toy")
    assert render_leaderboard([runs, other], world="toy", setting="mtil")[0].count("| alpha") == 3


def test_skipped_runs_are_reported_with_reasons(runs: Path) -> None:
    make_run(runs, "delta", 0, BASE, BASE_HOLDOUT, status="running")
    broken = make_run(runs, "delta", 1, BASE, BASE_HOLDOUT)
    (broken / "accuracy.parquet").write_bytes(b"not parquet")
    missing_row = make_run(runs, "delta", 2, BASE, BASE_HOLDOUT)
    acc = pd.read_parquet(missing_row / "accuracy.parquet")
    write_parquet(acc[acc["after_task"] != 2], missing_row / "accuracy.parquet")
    text, skipped = render_leaderboard([runs])
    reasons = {p.name: r for p, r in skipped}
    assert "unfinished" in reasons["toy-xtail-delta-seed0"]
    assert "corrupt" in reasons["toy-xtail-delta-seed1"]
    assert "missing accuracies" in reasons["toy-xtail-delta-seed2"]
    assert "delta" not in text


def test_overrides_are_separate_rows_and_duplicate_seeds_error(runs: Path, tmp_path: Path) -> None:
    make_run(tmp_path / "x", "alpha", 0, BASE, BASE_HOLDOUT, overrides={"rank": "8"})
    text, _ = render_leaderboard([runs, tmp_path / "x"], fmt="csv")
    assert ",alpha (rank=8),1," in text and ",alpha,3," in text
    make_run(tmp_path / "y", "alpha", 0, BASE, BASE_HOLDOUT)
    with pytest.raises(UserError, match="two runs of alpha with seed 0"):
        render_leaderboard([runs, tmp_path / "y"])


def test_cli_writes_file_and_mixing_exits_2(runs: Path, tmp_path: Path, capsys) -> None:
    from cl_bench.cli import main

    out = tmp_path / "board" / "xtail.md"
    main(["leaderboard", str(runs), "--per-dataset", "--out", str(out)])
    assert out.read_text() == render_leaderboard([runs], per_dataset=True)[0]
    make_run(runs, "alpha", 9, BASE, BASE_HOLDOUT, setting="mtil")
    with pytest.raises(SystemExit) as exc:
        main(["leaderboard", str(runs)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--setting" in err[0]


def test_unknown_metric_format_and_empty_dirs_are_user_errors(runs: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--metric"):
        render_leaderboard([runs], metric="best")
    with pytest.raises(UserError, match="--format"):
        render_leaderboard([runs], fmt="xlsx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no finished runs"):
        render_leaderboard([tmp_path / "empty"])


def write_domains(run_dir: Path, own: np.ndarray) -> None:
    """domains.parquet with `own[t, j]` of 100 images kept in their own domain, the rest
    split evenly over the two other domains."""
    rows = []
    for t in range(own.shape[0]):
        for j, name in enumerate(STREAM):
            for k, predicted in enumerate(STREAM):
                other = (100 - own[t, j]) / 2
                count = own[t, j] if k == j else other
                rows.append(
                    {"after_task": t, "eval_dataset": name, "predicted_domain": predicted,
                     "count": int(count)}
                )  # fmt: skip
    write_parquet(pd.DataFrame(rows), run_dir / "domains.parquet")


def test_cross_domain_table_from_domains_files(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    own = np.array([[90, 80, 70], [90, 60, 70], [80, 60, 50], [70, 60, 50]])
    for seed in (0, 1):
        run_dir = make_run(root, "alpha", seed, BASE, BASE_HOLDOUT)
        write_domains(run_dir, own - 10 * seed)  # seed 1: 10 points more cross-domain
    text, _ = render_leaderboard([root], fmt="csv")
    rows = table_rows(text)
    # cross-domain % = 100 - own; seed 0 rows: [10 20 30], [10 40 30], [20 40 50], [30 40 50]
    zero = rows[("cross_domain", "alpha", "zero-shot")]
    assert float(zero["mean"]) == pytest.approx((20 + 30) / 2)  # seeds: 20, 30
    last = rows[("cross_domain", "alpha", "after the last task")]
    assert float(last["mean"]) == pytest.approx((40 + 50) / 2)
    assert float(last["std"]) == pytest.approx(np.std([40, 50], ddof=1), abs=1e-4)
    over_tasks = rows[("cross_domain", "alpha", "mean over tasks")]
    assert float(over_tasks["mean"]) == pytest.approx((310 / 9 + 400 / 9) / 2, abs=1e-4)
    per = table_rows(render_leaderboard([root], fmt="csv", per_dataset=True)[0])
    assert float(per[("cross_domain", "alpha", "caltech101")]["mean"]) == pytest.approx(45.0)
    # a run whose domains.parquet lacks the zero-shot row (resumed across the file's
    # introduction), or has none at all (made before it): no table, nothing invented
    partial = make_run(root, "beta", 0, BASE, BASE_HOLDOUT)
    write_domains(partial, own)
    frame = pd.read_parquet(partial / "domains.parquet")
    write_parquet(frame[frame.after_task > 0], partial / "domains.parquet")
    assert "cross_domain" not in render_leaderboard([root], fmt="csv")[0]
    (partial / "domains.parquet").unlink()
    assert "cross_domain" not in render_leaderboard([root], fmt="csv")[0]
