"""The notebook API (cl_bench.workflow): run, Run, load_runs, leaderboard.

Three small runs on the fake world (2 tasks, 2 iterations, 16 test images per dataset) are
made once for the module: zeroshot with seeds 0 and 1, and a Learner subclass passed directly.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from fakeworld import FakeWorld
from typer.testing import CliRunner

import cl_bench
from cl_bench.analysis.results import ACCURACY_COLUMNS, read_parquet
from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.api.optim import OptimizerConfig
from cl_bench.api.toolkit import clip_logits, contrastive_loss
from cl_bench.errors import UserError
from cl_bench.workflow import Run, TqdmReporter

SMALL: dict[str, Any] = dict(max_tasks=2, iterations=2, batch_size=8, eval_limit=16)


def make_learner() -> type[Learner]:
    """A learner defined in a function (no importable target, as in a notebook cell)."""

    class ScaleOnly(Learner):
        description = "trains the logit scale"

        @dataclass
        class Config(OptimizerConfig):
            lr: float = 1e-2

        def trainable(self, task: Task) -> list[torch.nn.Parameter]:
            return [self.model.logit_scale]

        def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
            logits = clip_logits(self.model, batch.images, batch.text_tokens)
            return contrastive_loss(logits, batch.labels), {}

    return ScaleOnly


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {
            f"zs{seed}": cl_bench.run(
                learner="zeroshot", seed=seed, world=FakeWorld(), out=root / f"zs{seed}", **SMALL
            )
            for seed in (0, 1)
        }
        out["mine"] = cl_bench.run(
            learner=make_learner(),
            world=FakeWorld(),
            set={"lr": 0.02},
            out=str(root / "mine"),
            progress=False,
            **SMALL,
        )
    finally:
        torch.set_num_threads(threads)
    return out


def test_run_returns_the_accuracy_matrix_of_accuracy_parquet(runs: dict[str, Run]) -> None:
    r = runs["zs0"]
    parquet = read_parquet(r.run_dir / "accuracy.parquet")
    pd.testing.assert_frame_equal(r.rows, parquet)
    order = list(dict.fromkeys(parquet["eval_dataset"]))
    assert list(r.accuracy.columns) == order and len(order) >= 2
    assert list(r.accuracy.index) == [0, 1, 2]  # after_task 0..T, T = 2
    for row in parquet.itertuples():
        assert r.accuracy.loc[row.after_task, row.eval_dataset] == row.accuracy
    assert r.manifest["status"] == "finished" and not r.summary.empty
    loaded = Run.load(r.run_dir)
    pd.testing.assert_frame_equal(loaded.accuracy, r.accuracy)
    pd.testing.assert_frame_equal(loaded.summary, r.summary)
    assert loaded.manifest["config"] == r.manifest["config"]


def test_a_learner_class_passed_directly_runs_and_the_config_keeps_its_target(
    runs: dict[str, Run],
) -> None:
    r = runs["mine"]
    config = r.manifest["config"]
    assert config["learner"] == f"{__name__}:make_learner.<locals>.ScaleOnly"
    assert config["overrides"] == {"lr": "0.02"}  # str(), as --set gives it
    assert set(r.rows["learner"]) == {"scaleonly"}
    assert r.accuracy.shape == runs["zs0"].accuracy.shape
    # it trained its one parameter (the logit scale, which leaves top-1 as it was)
    assert [t["trainable_parameters"] for t in r.manifest["tasks"]] == [1, 1]


def test_run_defaults_are_run_configs() -> None:
    import inspect

    from cl_bench.engine.config import RunConfig

    params = inspect.signature(cl_bench.run).parameters
    for name in ("setting", "learner", "world", "seed"):
        assert params[name].default == getattr(RunConfig(), name)


def test_an_unknown_option_is_a_user_error_with_close_matches(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        cl_bench.run(world=FakeWorld(), max_task=2, out=tmp_path / "x")
    message = str(err.value)
    assert "'max_task'" in message and "Did you mean max_tasks" in message
    assert "eval_limit" in message and "Valid:" in message  # the valid keys are listed
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="iterations must be int"):
        cl_bench.run(world=FakeWorld(), iterations="2", out=tmp_path / "x")
    with pytest.raises(UserError, match="unknown learner"):  # the engine's own message
        cl_bench.run(learner="lorra", world=FakeWorld(), out=tmp_path / "x", **SMALL)


def test_load_runs_over_a_glob_is_long_with_the_identity_columns(runs: dict[str, Run]) -> None:
    root = runs["zs0"].run_dir.parent
    frame = cl_bench.load_runs(str(root / "zs*"))
    expected = len(runs["zs0"].rows) + len(runs["zs1"].rows)
    assert len(frame) == expected
    assert set(ACCURACY_COLUMNS) <= set(frame.columns) and "run_dir" in frame.columns
    assert sorted(frame["seed"].unique()) == [0, 1] and frame["run_id"].nunique() == 2
    # a list of a path and a glob; a folder holding runs; duplicates counted once
    both = cl_bench.load_runs([runs["mine"].run_dir, str(root / "*")])
    assert len(both) == expected + len(runs["mine"].rows)
    assert len(cl_bench.load_runs(root)) == len(both)
    with pytest.raises(UserError, match="nothing-here"):
        cl_bench.load_runs(str(root / "nothing-here*"))


def test_leaderboard_text_is_what_the_cli_prints(runs: dict[str, Run]) -> None:
    from cl_bench.cli.app import app

    dirs = [str(r.run_dir) for r in runs.values()]
    board = cl_bench.leaderboard(dirs)
    result = CliRunner().invoke(app, ["leaderboard", *dirs])
    assert result.exit_code == 0, result.output
    assert board.text == result.stdout
    assert set(board.tables) == {t.key for t in board.board.tables} >= {"summary", "cost"}
    summary = board.tables["summary"]
    assert sorted(summary.index) == ["scaleonly (lr=0.02)", "zeroshot"]
    assert summary.loc["zeroshot", "seeds"] == 2
    assert {"Transfer", "Transfer std", "Last"} <= set(summary.columns)
    # Run objects and a glob give the same board; per-dataset blocks like --per-dataset
    assert cl_bench.leaderboard(list(runs.values())).text == board.text
    per = cl_bench.leaderboard(str(runs["zs0"].run_dir.parent / "*"), per_dataset=True)
    cli = CliRunner().invoke(app, ["leaderboard", "--per-dataset", *dirs])
    assert per.text == cli.stdout and "transfer" in per.tables


def test_tqdm_reporter_draws_one_bar_per_phase() -> None:
    events: list[tuple[str, Any]] = []

    class FakeBar:
        def __init__(self, total: int, desc: str, leave: bool) -> None:
            events.append(("open", desc))

        def update(self, n: int) -> None:
            events.append(("update", n))

        def set_postfix(self, values: dict[str, str], refresh: bool) -> None:
            events.append(("postfix", values))

        def close(self) -> None:
            events.append(("close", None))

        @staticmethod
        def write(text: str) -> None:
            events.append(("write", text))

    reporter = TqdmReporter(FakeBar)
    reporter.phase("task 1", 2)
    reporter.advance(1, {"loss": 0.5, "step": 1})
    reporter.phase("eval", 1)
    reporter.message("hello")
    reporter.close()
    assert events == [
        ("open", "task 1"),
        ("postfix", {"loss": "0.5"}),
        ("update", 1),
        ("close", None),
        ("open", "eval"),
        ("write", "hello"),
        ("close", None),
    ]


def test_import_cl_bench_imports_no_torch() -> None:
    code = (
        "import sys, cl_bench\n"
        "assert 'torch' not in sys.modules\n"
        "assert {'run', 'load_runs', 'leaderboard', 'Run'} <= set(cl_bench.__all__)\n"
        "assert callable(cl_bench.run) and cl_bench.Run.__name__ == 'Run'\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
