"""Resume exactness: a run killed with SIGKILL anywhere resumes to the uninterrupted result.

The child process (this file run as a script) streams a small X-TAIL run on the FakeWorld
with the `finetune` learner plus a little noise augmentation drawn from the python, numpy
and torch global RNGs, so weights change every step and a wrong RNG restore changes the
numbers. Kill points are test-only patches installed in the child (no hook in the engine):

    step:T:S            after training step S (1-based) of task T (1-based)
    begin:T             at begin_task of task T: between tasks, after task T-1's checkpoint
    eval:T:B            after B evaluated batches of the evaluation after task T (0 = zero-shot)
    write:NAME:N        during the N-th atomic write (in this process) of a file whose name
                        starts with NAME: the temp file is half written, then the process dies
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakeworld import FakeWorld

from cl_bench.analysis.results import lock_run_dir, read_manifest
from cl_bench.api.registry import available_learners, get_learner
from cl_bench.engine.checkpoint import load_checkpoint
from cl_bench.engine.config import RunConfig
from cl_bench.engine.loop import Engine, run
from cl_bench.errors import RunFailed, UserError

HERE = Path(__file__).resolve().parent
NUM_TASKS = 4
ITERATIONS = 6


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(spec: str) -> None:
    """Patch the learner / evaluation / atomic writes of this process to die at `spec`."""
    import torch
    from cl_bench_baselines.finetune import Finetune

    import cl_bench.analysis.results
    import cl_bench.engine.checkpoint
    import cl_bench.engine.evaluator

    kind, *args = spec.split(":") if spec else [""]
    state = {"after_task": 0, "writes": 0, "batches": 0}
    original_loss, original_begin, original_end = (
        Finetune.loss,
        Finetune.begin_task,
        Finetune.end_task,
    )

    def loss(self, batch, step):
        # Noise augmentation from all three global RNGs: resume must restore each of them.
        noise = torch.randn_like(batch.images) * 0.05 * (1.0 + random.random())
        noise = noise * float(np.random.uniform(0.5, 1.5))
        batch.images = batch.images + noise
        return original_loss(self, batch, step)

    def after_step(self, step):
        if kind == "step" and (step.task_index + 1, step.step + 1) == (int(args[0]), int(args[1])):
            _kill()

    def begin_task(self, task):
        if kind == "begin" and task.index + 1 == int(args[0]):
            _kill()
        original_begin(self, task)

    def end_task(self, task):
        original_end(self, task)
        state["after_task"] = task.index + 1

    Finetune.loss, Finetune.after_step = loss, after_step
    Finetune.begin_task, Finetune.end_task = begin_task, end_task

    if kind == "eval":
        original_eval = cl_bench.engine.evaluator.evaluate_all

        def evaluate_all(*a, on_batch=None, **kw):
            def counted(n: int) -> None:
                if on_batch is not None:
                    on_batch(n)
                state["batches"] += 1
                if state["after_task"] == int(args[0]) and state["batches"] >= int(args[1]):
                    _kill()

            state["batches"] = 0
            return original_eval(*a, on_batch=counted, **kw)

        cl_bench.engine.evaluator.evaluate_all = evaluate_all

    if kind == "write":
        original_atomic = cl_bench.analysis.results.atomic_write

        def atomic_write(path, write):
            if not Path(path).name.startswith(args[0]):
                return original_atomic(path, write)
            state["writes"] += 1
            if state["writes"] < int(args[1]):
                return original_atomic(path, write)

            def half_then_die(tmp: Path) -> None:
                write(tmp)
                size = tmp.stat().st_size
                with open(tmp, "r+b") as fh:
                    fh.truncate(size // 2)
                _kill()

            return original_atomic(path, half_then_die)

        cl_bench.analysis.results.atomic_write = atomic_write
        cl_bench.engine.checkpoint.atomic_write = atomic_write


def child_main(out: str, spec: str, resume: bool) -> None:
    import torch

    torch.set_num_threads(1)
    _install_kill(spec)
    cfg = RunConfig(
        setting="xtail",
        learner="finetune",
        iterations=ITERATIONS,
        batch_size=8,
        max_tasks=NUM_TASKS,
        log_every=2,
        eval_batch_size=8,
        overrides={"lr": "1e-3"},  # large enough for the tiny model's predictions to move
        out=out,
        resume=resume,
    )
    run(cfg, world=FakeWorld())


def _child(out: Path, spec: str = "", resume: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(Path(__file__)), str(out), spec] + (["--resume"] if resume else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


def _tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_parquet(run_dir / f"{name}.parquet")
        for name in ("accuracy", "summary", "train_log", "domains")
    }


def _weights(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir)[0]
    return state["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = _child(out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_uninterrupted_reference_learns(reference: Path) -> None:
    acc = pd.read_parquet(reference / "accuracy.parquet")
    assert sorted(acc["after_task"].unique()) == list(range(NUM_TASKS + 1))
    # weights change: some accuracy differs from the zero-shot row
    pivot = acc.pivot_table(index="after_task", columns="eval_dataset", values="accuracy")
    assert (pivot.iloc[1:] != pivot.iloc[0]).to_numpy().any()
    log = pd.read_parquet(reference / "train_log.parquet")
    assert len(log) == NUM_TASKS * ITERATIONS // 2


# Each kill happens in a fresh process that resumes whatever the previous one left.
KILL_CHAIN = [
    "step:1:3",  # during task 1 training: no checkpoint yet, the resume starts over
    "begin:2",  # between tasks: task 1 checkpointed, task 2 not begun
    "eval:2:5",  # during the evaluation after task 2
    "write:accuracy.parquet:1",  # half-written accuracy.parquet after task 2
]
# The long chain: every kind of write, the zero-shot evaluation and the end of the run.
KILL_CHAIN_FULL = [
    "eval:0:3",  # during the zero-shot evaluation
    "write:accuracy.parquet:1",  # the zero-shot rows, half written
    "step:1:3",
    "eval:1:5",  # after task 1, nothing checkpointed yet
    "write:tensors:1",  # the first checkpoint's tensors, half written
    "begin:2",
    "write:accuracy.parquet:2",  # after task 3 (this process's first write is after task 2)
    "write:meta.json:1",  # checkpoint after task 3: new tensors written, meta.json not yet
    "write:manifest.json:2",  # the manifest after task 3 (the first is written at start)
    "write:train_log.parquet:1",
    "step:4:6",  # the last step of the last task
    "write:summary.parquet:1",  # after the last task, while writing the summary
    "write:manifest.json:2",  # the final manifest (status finished) half written
]


def _kill_chain_then_resume(out: Path, chain: list[str]) -> None:
    for i, spec in enumerate(chain):
        proc = _child(out, spec, resume=i > 0)
        assert proc.returncode == -signal.SIGKILL, (spec, proc.returncode, proc.stderr[-2000:])
        if spec.startswith("write:"):  # the killed write left its temp file, not a torn file
            assert list(out.rglob(".*.tmp")), spec
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "running"  # SIGKILL leaves no chance to say otherwise
    proc = _child(out, resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _assert_same_run(out: Path, reference: Path) -> None:
    got, want = _tables(out), _tables(reference)
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True, obj=name)
    got_weights, want_weights = _weights(out), _weights(reference)
    assert got_weights.keys() == want_weights.keys()
    for key, tensor in want_weights.items():
        assert got_weights[key].equal(tensor), key
    assert not list(out.rglob(".*.tmp"))  # the resume swept the temp files of killed writes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert [t["task"] for t in manifest["tasks"]] == list(range(1, NUM_TASKS + 1))
    assert all(t["train_time_s"] >= 0 and t["peak_rss_mb"] > 0 for t in manifest["tasks"])
    assert set(manifest["splits"]["aircraft"]) == {"train", "test"}
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [
        "meta.json",
        f"tensors-{NUM_TASKS:03d}.safetensors",
    ]


def test_sigkill_anywhere_then_resume_is_exact(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _kill_chain_then_resume(out, KILL_CHAIN)
    _assert_same_run(out, reference)


@pytest.mark.slow
def test_sigkill_at_every_kind_of_point_then_resume_is_exact(
    reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    _kill_chain_then_resume(out, KILL_CHAIN_FULL)
    _assert_same_run(out, reference)


@pytest.mark.slow
def test_clbench_toy_run_killed_after_its_first_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    """The real command on the toy world: SIGKILL once task 1 is checkpointed, then --resume."""
    import time

    clbench = [str(Path(sys.executable).parent / "clbench"), "run", "--setting", "xtail"]
    args = ["--learner", "finetune", "--iterations", "4", "--max-tasks", "3", "--eval-limit", "20"]
    ref = subprocess.run([*clbench, *args, "--out", str(tmp_path / "ref")], capture_output=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [*clbench, *args, "--out", str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 900
    while not (cut / "checkpoint" / "meta.json").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert json.loads((cut / "manifest.json").read_text())["status"] == "running"
    again = subprocess.run([*clbench, *args, "--out", str(cut), "--resume"], capture_output=True)
    assert again.returncode == 0, again.stderr[-2000:]
    for name in ("accuracy", "summary", "train_log"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(cut / f"{name}.parquet"),
            pd.read_parquet(tmp_path / "ref" / f"{name}.parquet"),
            check_exact=True,
            obj=name,
        )
    assert json.loads((cut / "manifest.json").read_text())["resumed_at_task"] == 1


# ---------------------------------------------------------------------------------------
# In-process checks: every learner, config changes, guards, damaged files
# ---------------------------------------------------------------------------------------


def _cfg(out: Path, **kw) -> RunConfig:
    base = dict(
        setting="xtail", learner="finetune", iterations=3, batch_size=8, max_tasks=2, log_every=1
    )
    return RunConfig(**{**base, **kw, "out": str(out)})


def _run(cfg: RunConfig):
    return run(cfg, world=FakeWorld())


# finetune and drslora in the default suite; every other registered learner with -m slow.
SWEEP = [
    n if n in ("finetune", "drslora") else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(available_learners())
]


@pytest.mark.parametrize("name", SWEEP)
def test_every_learner_resumes_exactly_at_a_task_boundary(name, tmp_path, monkeypatch) -> None:
    """Interrupt before task 2, resume: rows, train log and records equal the uninterrupted run."""
    cls = get_learner(name)
    cfg = dict(learner=name, iterations=2)
    want = _run(_cfg(tmp_path / "ref", **cfg))
    original = cls.begin_task

    def interrupt(self, task):
        if task.index == 1:
            raise KeyboardInterrupt
        original(self, task)

    monkeypatch.setattr(cls, "begin_task", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(tmp_path / "cut", **cfg))
    assert read_manifest(tmp_path / "cut")["status"] == "interrupted"
    monkeypatch.setattr(cls, "begin_task", original)
    got = _run(_cfg(tmp_path / "cut", **cfg, resume=True))
    assert got.manifest["resumed_at_task"] == 1
    assert [r["previous_status"] for r in got.manifest["resumes"]] == ["interrupted"]
    pd.testing.assert_frame_equal(got.accuracy, want.accuracy, check_exact=True)
    files = sorted(p.name for p in (tmp_path / "ref").glob("*.parquet"))
    assert files == sorted(p.name for p in (tmp_path / "cut").glob("*.parquet"))
    for name_ in files:
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "cut" / name_),
            pd.read_parquet(tmp_path / "ref" / name_),
            check_exact=True,
            obj=name_,
        )


@pytest.fixture
def one_task_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    _run(_cfg(out, max_tasks=1))
    return out


def test_resume_with_a_different_config_is_refused_with_the_keys(one_task_run: Path) -> None:
    manifest = json.loads((one_task_run / "manifest.json").read_text())
    manifest["status"] = "interrupted"
    (one_task_run / "manifest.json").write_text(json.dumps(manifest))
    changed = _cfg(one_task_run, max_tasks=1, iterations=4, overrides={"lr": "1e-5"}, resume=True)
    with pytest.raises(UserError) as err:
        Engine(changed, world=FakeWorld())
    msg = str(err.value)
    assert "iterations: 3 -> 4" in msg and "'lr': '1e-5'" in msg and "add --force" in msg
    # what the rows are (identity, datasets, test sets) cannot change, not even with --force
    for key, value in [("seed", 1), ("max_tasks", 2), ("eval_limit", 5)]:
        other = _cfg(one_task_run, **{"max_tasks": 1, key: value}, resume=True, force=True)
        with pytest.raises(UserError, match=f"--resume cannot change {key} "):
            Engine(other, world=FakeWorld())
    # --force accepts the rest
    changed.force = True
    Engine(changed, world=FakeWorld())


def test_a_finished_run_dir_is_never_overwritten_silently(one_task_run: Path) -> None:
    with pytest.raises(UserError, match="already holds a finished run; pass --force"):
        Engine(_cfg(one_task_run, max_tasks=1), world=FakeWorld())
    with pytest.raises(UserError, match="already finished; nothing to resume"):
        Engine(_cfg(one_task_run, max_tasks=1, resume=True), world=FakeWorld())


def test_force_restart_clears_the_old_checkpoint_and_tables(one_task_run: Path) -> None:
    """An old checkpoint must not leak into a forced fresh run (it would be resumed later)."""
    Engine(_cfg(one_task_run, max_tasks=1, force=True), world=FakeWorld()).directory.clear_outputs()
    assert not (one_task_run / "checkpoint").exists()
    assert not (one_task_run / "accuracy.parquet").exists()
    assert not (one_task_run / "train_log.parquet").exists()


def test_resume_with_nothing_to_resume_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no run to resume; drop --resume"):
        Engine(_cfg(tmp_path / "empty", resume=True), world=FakeWorld())


def test_a_second_process_cannot_write_the_same_run_dir(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with lock_run_dir(out):
        with pytest.raises(UserError, match="being written by another clbench process"):
            _run(_cfg(out, max_tasks=1))
    _run(_cfg(out, max_tasks=1))  # the lock is released with its holder


NAN_LEARNER = """
from cl_bench_baselines.finetune import Finetune


class NanAtTask2(Finetune):
    def loss(self, batch, step):
        loss, scalars = super().loss(batch, step)
        if step.task_index == 1 and step.step == 2:
            return loss * float("nan"), scalars
        return loss, scalars
"""


def test_non_finite_loss_stops_naming_task_and_step_and_keeps_completed_tasks(
    tmp_path: Path,
) -> None:
    learner_file = tmp_path / "nan_learner.py"
    learner_file.write_text(NAN_LEARNER)
    out = tmp_path / "run"
    cfg = _cfg(out, learner=f"{learner_file}:NanAtTask2", max_tasks=3, log_every=2)
    with pytest.raises(RunFailed) as err:
        _run(cfg)
    assert "non-finite loss (nan) at task 2 (caltech101), step 3" in str(err.value)
    manifest = read_manifest(out)
    assert manifest["status"] == "failed" and "step 3" in manifest["error"]
    assert [t["task"] for t in manifest["tasks"]] == [1]
    acc = pd.read_parquet(out / "accuracy.parquet")
    assert sorted(acc["after_task"].unique()) == [0, 1]
    assert load_checkpoint(out)[1] == 1  # resumable from the last completed task


def test_loss_returning_no_pair_is_a_clear_error(tmp_path: Path) -> None:
    learner_file = tmp_path / "bad_learner.py"
    learner_file.write_text(
        "from cl_bench_baselines.finetune import Finetune\n"
        "class ReturnsLoss(Finetune):\n"
        "    def loss(self, batch, step):\n"
        "        return super().loss(batch, step)[0]\n"
    )
    with pytest.raises(
        UserError, match=r"ReturnsLoss.loss returned a Tensor; return \(loss, \{scalars\}\)"
    ):
        _run(_cfg(tmp_path / "run", learner=f"{learner_file}:ReturnsLoss", max_tasks=1))


def _interrupted(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["status"] = "interrupted"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def test_truncated_checkpoint_tensors_name_the_file(one_task_run: Path) -> None:
    _interrupted(one_task_run)
    tensors = one_task_run / "checkpoint" / "tensors-001.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"tensors-001.safetensors is corrupt or truncated"):
        _run(_cfg(one_task_run, max_tasks=1, resume=True))


def test_corrupt_checkpoint_meta_names_the_file(one_task_run: Path) -> None:
    _interrupted(one_task_run)
    (one_task_run / "checkpoint" / "meta.json").write_text('{"completed_tasks": 1')
    with pytest.raises(UserError, match=r"checkpoint .*meta.json is corrupt"):
        _run(_cfg(one_task_run, max_tasks=1, resume=True))


def test_corrupt_accuracy_parquet_names_the_file(one_task_run: Path) -> None:
    _interrupted(one_task_run)
    path = one_task_run / "accuracy.parquet"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(UserError, match=r"accuracy.parquet is corrupt or truncated"):
        _run(_cfg(one_task_run, max_tasks=1, resume=True))


def test_accuracy_rows_missing_for_a_checkpointed_task_is_an_error(one_task_run: Path) -> None:
    _interrupted(one_task_run)
    path = one_task_run / "accuracy.parquet"
    acc = pd.read_parquet(path)
    acc[acc["after_task"] == 0].to_parquet(path, index=False)
    with pytest.raises(UserError, match=r"lacks the rows after task\(s\) \[1\]"):
        _run(_cfg(one_task_run, max_tasks=1, resume=True))


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "", "--resume" in sys.argv)
