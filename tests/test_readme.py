"""The README's promises: its custom learner example runs through `clbench run` as written."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

README = Path(__file__).resolve().parent.parent / "README.md"


def _example_learner_source() -> str:
    text = README.read_text()
    section = text.split("## Write your own learner", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _clbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from cl_bench.cli import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_readme_learner_runs_through_the_cli(tmp_path):
    (tmp_path / "my_learner.py").write_text(_example_learner_source())
    command = re.search(
        r"clbench run (--setting xtail --learner my_learner\.py:LastBlock --iterations 10)",
        README.read_text(),
    )
    assert command, "README no longer shows the command that runs the example"
    args = command.group(1).split() + ["--max-tasks", "2", "--eval-limit", "64", "--out", "run"]
    proc = _clbench("run", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["learner"]["name"] == "lastblock"
    acc = pd.read_parquet(tmp_path / "run" / "accuracy.parquet")
    assert sorted(acc["after_task"].unique()) == [0, 1, 2]
    # the learner trained what it declared: the last vision block, through the engine's step
    block = manifest["tasks"][0]["trainable_parameters"]
    assert block == manifest["tasks"][1]["trainable_parameters"] > 0
    assert block < manifest["backbone"]["parameters"] / 4
    log = pd.read_parquet(tmp_path / "run" / "train_log.parquet")
    assert len(log) == 2 and log["loss"].notna().all()
    matrix = acc.pivot(index="after_task", columns="eval_dataset", values="correct")
    assert not matrix.loc[1].equals(matrix.loc[0])  # the predictions moved


def test_readme_python_section_runs(tmp_path, monkeypatch):
    """The README's "From Python" block, executed as written (in tmp_path)."""
    section = README.read_text().split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    run, runs, board = namespace["run"], namespace["runs"], namespace["board"]
    assert list(run.accuracy.index) == [0, 1, 2]
    assert run.accuracy.loc[0].notna().all()
    assert len(runs) == len(run.rows) and set(runs["learner"]) == {"drslora"}
    assert "drslora" in board.text and board.tables
