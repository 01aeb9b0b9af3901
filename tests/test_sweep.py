"""`clbench sweep`: the grid's run dirs, idempotence (skip / resume), executors, failures."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cl_bench.engine.config import RunConfig
from cl_bench.errors import RunFailed, UserError
from cl_bench.sweep.plan import (
    Job,
    LocalExecutor,
    check_states,
    make_executor,
    parse_seeds,
    plan_jobs,
    run_args,
    run_sweep,
)

REPO = Path(__file__).resolve().parent.parent
BASE = RunConfig(setting="xtail", iterations=2, max_tasks=2, eval_limit=6)


@dataclass
class DoneHandle:
    code: int
    message: str

    def poll(self) -> int | None:
        return self.code

    def cancel(self) -> None:
        pass

    def error_tail(self) -> str:
        return self.message


class InlineExecutor:
    """Runs each job in this process on the fake world: the executor seam without processes."""

    capacity = 1

    def __init__(self) -> None:
        self.submitted: list[Job] = []

    def submit(self, job: Job) -> DoneHandle:
        from fakeworld import FakeWorld

        from cl_bench.engine.loop import run

        self.submitted.append(job)
        try:
            run(job.config, world=FakeWorld())
        except Exception as exc:  # reported as a failed cell, like a non-zero exit
            return DoneHandle(1, f"{type(exc).__name__}: {exc}")
        return DoneHandle(0, "")


def test_plan_names_runs_like_the_engine_and_validates(tmp_path: Path) -> None:
    jobs = plan_jobs(BASE, ["zeroshot", "finetune"], [0, 1], tmp_path)
    assert [j.run_dir.name for j in jobs] == [
        "toy-xtail-zeroshot-seed0",
        "toy-xtail-zeroshot-seed1",
        "toy-xtail-finetune-seed0",
        "toy-xtail-finetune-seed1",
    ]
    assert {j.action for j in jobs} == {"run"}
    mtil = plan_jobs(
        replace(BASE, setting="mtil", shots=5, order="II"), ["zeroshot"], [3], tmp_path
    )
    assert mtil[0].run_dir.name == "toy-mtil-orderII-5shot-zeroshot-seed3"
    args = run_args(jobs[2].config)
    assert args[:2] == ["run", "--setting"] and "--resume" not in args
    assert args[args.index("--out") + 1] == str(tmp_path / "toy-xtail-finetune-seed0")
    with pytest.raises(UserError, match="unknown learner"):
        plan_jobs(BASE, ["nope"], [0], tmp_path)
    with pytest.raises(UserError):
        plan_jobs(replace(BASE, overrides={"no_such_key": "1"}), ["finetune"], [0], tmp_path)
    with pytest.raises(UserError, match="--seeds"):
        parse_seeds("0,x")
    with pytest.raises(UserError, match="unknown --executor 'nope'; valid: local, slurm, ray"):
        make_executor("nope", 1)
    with pytest.raises(UserError, match="--jobs applies to --executor local, not slurm"):
        make_executor("slurm", 1)


def test_sweep_is_idempotent_and_resumes_unfinished_runs(tmp_path: Path) -> None:
    executor = InlineExecutor()
    jobs = plan_jobs(BASE, ["zeroshot", "finetune"], [0], tmp_path)
    states = run_sweep(jobs, executor, poll_s=0)
    check_states(states)
    assert {s.status for s in states.values()} == {"finished"} and len(executor.submitted) == 2
    for j in jobs:
        assert json.loads((j.run_dir / "manifest.json").read_text())["status"] == "finished"

    # Second sweep: every run is finished -> nothing is submitted.
    again = plan_jobs(BASE, ["zeroshot", "finetune"], [0], tmp_path)
    assert {j.action for j in again} == {"skip"}
    executor2 = InlineExecutor()
    assert {s.status for s in run_sweep(again, executor2, poll_s=0).values()} == {"skipped"}
    assert executor2.submitted == []

    # An interrupted run is resumed (--resume), the others stay skipped.
    manifest_path = tmp_path / "toy-xtail-finetune-seed0" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["status"] = "interrupted"
    manifest_path.write_text(json.dumps(manifest))
    third = plan_jobs(BASE, ["zeroshot", "finetune"], [0], tmp_path)
    resumed = [j for j in third if j.action == "resume"]
    assert [(j.learner, j.seed) for j in resumed] == [("finetune", 0)]
    assert "--resume" in run_args(resumed[0].config)
    executor3 = InlineExecutor()
    check_states(run_sweep(third, executor3, poll_s=0))
    assert executor3.submitted == resumed
    assert json.loads(manifest_path.read_text())["status"] == "finished"

    # A finished run of another configuration in the way stops the sweep before it starts.
    with pytest.raises(UserError, match=r"iterations: 2 -> 3"):
        plan_jobs(replace(BASE, iterations=3), ["finetune"], [0], tmp_path)


def test_local_executor_runs_processes_and_reports_failures(tmp_path: Path) -> None:
    """Real `clbench run` subprocesses (on the fake world), two at a time; one learner fails."""
    program = tmp_path / "clbench_fake.py"
    program.write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]\n"
        "import cl_bench.engine.loop as engine\n"
        "from fakeworld import FakeWorld\n"
        "engine.get_world = lambda cfg: FakeWorld()\n"
        "from cl_bench.cli import main\n"
        "main()\n"
    )
    broken = tmp_path / "broken.py"
    broken.write_text(
        "from cl_bench.api.learner import Learner\n"
        "class Broken(Learner):\n"
        "    name = 'broken'\n"
        "    def train_step(self, batch, step):\n"
        "        raise RuntimeError('boom in train_step')\n"
    )
    jobs = plan_jobs(
        replace(BASE, max_tasks=1), ["zeroshot", f"{broken}:Broken"], [0], tmp_path / "runs"
    )
    executor = LocalExecutor(jobs=2, program=[sys.executable, str(program)])
    states = run_sweep(jobs, executor, poll_s=0.2)
    by_learner = {j.learner.split(":")[-1]: states[j] for j in jobs}
    assert by_learner["zeroshot"].status == "finished"
    assert by_learner["Broken"].status == "failed"
    assert "boom in train_step" in by_learner["Broken"].detail
    with pytest.raises(RunFailed, match="1 of 2 runs failed"):
        check_states(states)
    assert (tmp_path / "runs" / "toy-xtail-zeroshot-seed0" / "accuracy.parquet").exists()


def test_cli_dry_run_prints_the_plan(tmp_path: Path, capsys) -> None:
    from cl_bench.cli import main

    main(["sweep", "--learners", "zeroshot,finetune", "--seeds", "0,1", "--out", str(tmp_path), "--dry-run"])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("run ") for line in lines)
    assert lines[0].endswith(str(tmp_path / "toy-xtail-zeroshot-seed0"))
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--learners", "zeroshot", "--jobs", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_grid_view_prints_state_changes_and_the_final_grid(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from cl_bench.sweep.plan import CellState, GridView

    jobs = plan_jobs(BASE, ["zeroshot", "finetune"], [0, 1], tmp_path)
    buf = io.StringIO()
    states = {j: CellState("queued") for j in jobs}
    with GridView(["zeroshot", "finetune"], [0, 1], console=Console(file=buf, width=120)) as view:
        view.update(jobs, states)
        states[jobs[0]] = CellState("failed", "exit 1: boom")
        view.update(jobs, states)
        view.update(jobs, states)  # no change -> no new line
    text = buf.getvalue()
    assert text.count("zeroshot seed 0: queued") == 1
    assert text.count("zeroshot seed 0: failed (exit 1: boom)") == 1
    assert "seed 1" in text and "finetune" in text.splitlines()[-2]  # the final grid table
