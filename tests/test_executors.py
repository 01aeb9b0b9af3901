"""Sweeps through submitit (its local cluster) and Ray (a local cluster): the same run dirs and
leaderboard as `--executor local`, idempotent re-runs, resume after preemption / cancel."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from cl_bench.analysis.leaderboard import build_board
from cl_bench.engine.config import RunConfig
from cl_bench.errors import UserError
from cl_bench.sweep.executors import check_gpu_request, start_config
from cl_bench.sweep.plan import (
    EXECUTORS,
    LocalExecutor,
    check_states,
    executor_options,
    make_executor,
    plan_jobs,
    run_sweep,
)

# The toy world on 1 thread: runs are deterministic by seed whichever process runs them.
BASE = RunConfig(setting="xtail", iterations=4, max_tasks=2, eval_limit=64, threads=1)
LEARNERS = ["zeroshot", "finetune"]
SEEDS = [0]
TIMEOUT_S = 300


def sweep(executor, out: Path, base: RunConfig = BASE, learners=LEARNERS) -> dict:
    jobs = plan_jobs(base, learners, SEEDS, out)
    states = run_sweep(jobs, executor, poll_s=0.2)
    check_states(states)
    return {(j.learner, j.seed): s.status for j, s in states.items()}


def assert_same_results(expected: Path, actual: Path) -> None:
    """Every accuracy parquet identical, and the leaderboard's metric tables too."""
    names = sorted(p.name for p in expected.iterdir() if p.is_dir())
    assert names == sorted(p.name for p in actual.iterdir() if p.is_dir())
    for name in names:
        pd.testing.assert_frame_equal(
            pd.read_parquet(expected / name / "accuracy.parquet"),
            pd.read_parquet(actual / name / "accuracy.parquet"),
        )
    (board_a, _), (board_b, _) = build_board([expected]), build_board([actual])
    tables_a = [t for t in board_a.tables if t.key != "cost"]  # costs are wall times
    tables_b = [t for t in board_b.tables if t.key != "cost"]
    assert board_a.group == board_b.group and board_a.runs == board_b.runs == len(names)
    assert [t.key for t in tables_a] == ["summary", "holdout", "cross_domain"]
    assert repr(tables_a) == repr(tables_b)  # repr: a nan std (one seed) equals nan


def wait_for(predicate, what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def completed_tasks(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "checkpoint" / "meta.json").read_text())["completed_tasks"]
    except (OSError, ValueError, KeyError):
        return 0


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The grid through `--executor local`: what every other executor must reproduce."""
    out = tmp_path_factory.mktemp("local")
    assert set(sweep(LocalExecutor(jobs=2), out).values()) == {"finished"}
    return out


# ------------------------------------------------------------------------------ options
def test_bad_executor_options_are_one_line_user_errors(monkeypatch) -> None:
    with pytest.raises(UserError, match="unknown --executor 'nope'; valid: local, slurm, ray"):
        make_executor("nope")
    with pytest.raises(UserError, match="--ray-address applies to --executor ray, not slurm"):
        executor_options("slurm", ray_address="auto")
    with pytest.raises(UserError, match="--gpus-per-run applies to --executor slurm or ray"):
        executor_options("local", gpus_per_run=1)
    with pytest.raises(UserError, match="--jobs applies to --executor local, not ray"):
        executor_options("ray", jobs=2)
    with pytest.raises(UserError, match="--array-parallelism must be >= 1, got 0"):
        executor_options("slurm", array_parallelism=0)
    with pytest.raises(UserError, match="--jobs must be >= 1, got 0"):
        executor_options("local", jobs=0)
    with pytest.raises(UserError, match="--cpus-per-run must be >= 1"):
        executor_options("ray", cpus_per_run=0)
    assert executor_options("slurm", partition="gpu", gpus_per_run=0, mem_gb=None) == {
        "partition": "gpu",
        "gpus_per_run": 0,
    }
    assert check_gpu_request("slurm", "cuda", None) == 1
    assert check_gpu_request("ray", "cpu", None) == 0
    with pytest.raises(UserError, match="never use; add --device cuda"):
        check_gpu_request("ray", "cpu", 2)
    with pytest.raises(UserError, match="would get no GPU"):
        check_gpu_request("slurm", "cuda", 0)
    assert EXECUTORS.names() == ["local", "slurm", "ray"]
    for name in EXECUTORS:  # every CLI option is a constructor argument
        cls = EXECUTORS.get(name)
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(cls.flags) <= fields and all(f.startswith("--") for f in cls.flags.values())
    with pytest.raises(UserError, match=r"unknown --executor 'slrum' \(did you mean slurm\?\)"):
        make_executor("slrum")
    if importlib.util.find_spec("submitit"):
        with pytest.raises(UserError, match="--executor slurm needs --time-min"):
            make_executor("slurm", cluster="local")
    for module, extra in (("submitit", "slurm"), ("ray", "ray")):
        monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
        with pytest.raises(UserError, match=rf'pip install -e "\.\[{extra}\]"'):
            make_executor(extra)


def test_cli_rejects_misplaced_options_before_anything_runs(tmp_path: Path, capsys) -> None:
    from cl_bench.cli import main

    def exit_code(*args: str) -> int:
        with pytest.raises(SystemExit) as exc:
            main(["sweep", "--learners", "zeroshot", "--out", str(tmp_path), *args])
        return exc.value.code

    assert exit_code("--executor", "slurm", "--ray-address", "auto") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ray-address applies to --executor ray" in err
    assert "Traceback" not in err
    assert exit_code("--executor", "ray", "--array-parallelism", "4") == 2
    assert exit_code("--executor", "slurm", "--array-parallelism", "0") == 2
    assert exit_code("--executor", "slurm", "--gpus-per-run", "1") == 2  # --device cpu
    assert exit_code("--executor", "kubernetes") == 2
    assert "unknown --executor 'kubernetes'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was started or written
    # A valid cluster sweep plans (dry run) without starting a cluster.
    main(["sweep", "--learners", "zeroshot", "--seeds", "0", "--out", str(tmp_path), "--executor", "ray", "--cpus-per-run", "2", "--dry-run"])  # fmt: skip
    assert capsys.readouterr().out.startswith("run     zeroshot seed 0 -> ")


def test_worker_decides_fresh_or_resume_from_the_run_dir(tmp_path: Path) -> None:
    cfg = replace(BASE, out=str(tmp_path / "run"), resume=True)
    assert start_config(cfg).resume is False  # no manifest: --resume would be refused
    (tmp_path / "run").mkdir()
    for status, resume in (("running", True), ("interrupted", True), ("failed", True)):
        (tmp_path / "run" / "manifest.json").write_text(json.dumps({"status": status}))
        assert start_config(replace(cfg, resume=False)).resume is resume
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"status": "finished"}))
    assert start_config(cfg) is None


# ------------------------------------------------------------------------------ submitit
def slurm_executor(tmp_path: Path):
    """The SLURM executor's code path on submitit's local cluster (what the CLI builds)."""
    pytest.importorskip("submitit")
    options = executor_options(
        "slurm", cluster="local", time_min=10, cpus_per_run=1, slurm_logs=tmp_path / "logs"
    )
    return make_executor("slurm", **options)


def test_slurm_sweep_through_submitit_matches_local_and_is_idempotent(
    tmp_path: Path, reference: Path
) -> None:
    executor = slurm_executor(tmp_path)
    out = tmp_path / "runs"
    assert set(sweep(executor, out).values()) == {"finished"}
    assert_same_results(reference, out)
    logs = sorted((tmp_path / "logs").rglob("*_log.out"))
    assert len(logs) == 2 and all("exited with code 0" in p.read_text() for p in logs)
    # The same sweep again: every cell is skipped, nothing is submitted.
    assert set(sweep(executor, out).values()) == {"skipped"}
    assert len(sorted((tmp_path / "logs").rglob("*_log.out"))) == 2


def test_cli_sweep_through_submitit(tmp_path: Path, reference: Path, capsys) -> None:
    """`clbench sweep --executor slurm` end to end (submitit's local cluster, hidden option)."""
    from cl_bench.cli import main

    pytest.importorskip("submitit")
    out, logs = tmp_path / "runs", tmp_path / "logs"
    main(["sweep", "--learners", "zeroshot", "--seeds", "0", "--iterations", "4", "--max-tasks", "2", "--eval-limit", "64", "--threads", "1", "--out", str(out), "--executor", "slurm", "--submitit-cluster", "local", "--time-min", "5", "--cpus-per-run", "1", "--slurm-logs", str(logs)])  # fmt: skip
    assert "zeroshot seed 0: finished" in capsys.readouterr().err
    name = "toy-xtail-zeroshot-seed0"
    pd.testing.assert_frame_equal(
        pd.read_parquet(reference / name / "accuracy.parquet"),
        pd.read_parquet(out / name / "accuracy.parquet"),
    )
    assert len(list(logs.rglob("*_log.out"))) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the job's task in /proc")
def test_slurm_requeue_after_preemption_resumes_from_the_checkpoint(
    tmp_path: Path, reference: Path
) -> None:
    """submitit's preemption signal mid-run: checkpoint() stops the run, the requeued job
    resumes it after task 1, and the results equal an uninterrupted run's."""
    executor = slurm_executor(tmp_path)
    out = tmp_path / "runs"
    (job,) = plan_jobs(BASE, ["finetune"], SEEDS, out)
    handle = executor.submit(job)
    wait_for(lambda: completed_tasks(job.run_dir) >= 1, "task 1's checkpoint")
    assert handle.poll() is None, "the run ended before it could be preempted"
    # What SLURM sends the job's task before a preemption or the time limit (submitit's local
    # cluster sends it only at its own time-out): USR2 to the submitit process running the run.
    wrapper = parent_pid(int((job.run_dir / ".lock").read_text()))
    assert b"submitit" in Path(f"/proc/{wrapper}/cmdline").read_bytes()
    os.kill(wrapper, signal.SIGUSR2)
    wait_for(lambda: handle.poll() is not None, "the requeued job")
    assert handle.poll() == 0, handle.error_tail()
    run = manifest(job.run_dir)
    assert run["status"] == "finished"
    assert [r["at_task"] for r in run["resumes"]] == [1]
    assert run["resumes"][0]["previous_status"] == "interrupted"  # stopped by checkpoint()
    log = handle.job.stdout()
    assert "clbench run -> " in log and "clbench run --resume -> " in log
    pd.testing.assert_frame_equal(
        pd.read_parquet(reference / job.run_dir.name / "accuracy.parquet"),
        pd.read_parquet(job.run_dir / "accuracy.parquet"),
    )


# ------------------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_sweep_matches_local_and_is_idempotent(
    tmp_path: Path, reference: Path, ray_cluster
) -> None:
    from cl_bench.sweep.executors import RayExecutor

    executor = RayExecutor(cpus_per_run=1)
    assert set(sweep(executor, tmp_path).values()) == {"finished"}
    assert_same_results(reference, tmp_path)
    assert set(sweep(executor, tmp_path).values()) == {"skipped"}


def test_ray_cancel_stops_the_remote_run_and_the_next_sweep_resumes_it(
    tmp_path: Path, reference: Path, ray_cluster
) -> None:
    from cl_bench.sweep.executors import RayExecutor

    executor = RayExecutor(cpus_per_run=1)
    (job,) = plan_jobs(BASE, ["finetune"], SEEDS, tmp_path)
    handle = executor.submit(job)
    wait_for(lambda: completed_tasks(job.run_dir) >= 1, "task 1's checkpoint")
    pid = int((job.run_dir / ".lock").read_text())
    handle.cancel()
    assert handle.poll() == 1 and "Cancel" in handle.error_tail()
    assert manifest(job.run_dir)["status"] == "interrupted"  # SIGINT reached the run
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    (again,) = plan_jobs(BASE, ["finetune"], SEEDS, tmp_path)
    assert again.action == "resume"
    check_states(run_sweep([again], executor, poll_s=0.2))
    assert [r["at_task"] for r in manifest(job.run_dir)["resumes"]] == [1]
    pd.testing.assert_frame_equal(
        pd.read_parquet(reference / job.run_dir.name / "accuracy.parquet"),
        pd.read_parquet(job.run_dir / "accuracy.parquet"),
    )
