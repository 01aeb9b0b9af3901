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

HERE = Path(__file__).resolve().parent
NUM_TASKS = 4
ITERATIONS = 6


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(spec: str) -> None:
    """Patch the learner / evaluation / atomic writes of this process to die at `spec`."""
    import torch

    import cl_bench.checkpoint
    import cl_bench.engine
    import cl_bench.results
    from baselines.finetune import Finetune

    kind, *args = spec.split(":") if spec else [""]
    state = {"after_task": 0, "writes": 0, "batches": 0}
    original_step, original_begin, original_end = (
        Finetune.train_step,
        Finetune.begin_task,
        Finetune.end_task,
    )

    def train_step(self, batch, step):
        # Noise augmentation from all three global RNGs: resume must restore each of them.
        noise = torch.randn_like(batch.images) * 0.05 * (1.0 + random.random())
        noise = noise * float(np.random.uniform(0.5, 1.5))
        batch.images = batch.images + noise
        out = original_step(self, batch, step)
        if kind == "step" and (step.task_index + 1, step.step + 1) == (int(args[0]), int(args[1])):
            _kill()
        return out

    def begin_task(self, task):
        if kind == "begin" and task.index + 1 == int(args[0]):
            _kill()
        original_begin(self, task)

    def end_task(self, task):
        original_end(self, task)
        state["after_task"] = task.index + 1

    Finetune.train_step, Finetune.begin_task, Finetune.end_task = train_step, begin_task, end_task

    if kind == "eval":
        original_eval = cl_bench.engine.evaluate_all

        def evaluate_all(*a, on_batch=None, **kw):
            def counted(n: int) -> None:
                if on_batch is not None:
                    on_batch(n)
                state["batches"] += 1
                if state["after_task"] == int(args[0]) and state["batches"] >= int(args[1]):
                    _kill()

            state["batches"] = 0
            return original_eval(*a, on_batch=counted, **kw)

        cl_bench.engine.evaluate_all = evaluate_all

    if kind == "write":
        original_atomic = cl_bench.results.atomic_write

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

        cl_bench.results.atomic_write = atomic_write
        cl_bench.checkpoint.atomic_write = atomic_write


def child_main(out: str, spec: str, resume: bool) -> None:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from fakeworld import FakeWorld

    from cl_bench.config import RunConfig
    from cl_bench.engine import run

    _install_kill(spec)
    cfg = RunConfig(
        setting="xtail",
        learner="finetune",
        iterations=ITERATIONS,
        batch_size=8,
        max_tasks=NUM_TASKS,
        log_every=2,
        eval_batch_size=8,
        out=out,
        resume=resume,
    )
    run(cfg, world=FakeWorld())


def _child(out: Path, spec: str = "", resume: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(Path(__file__)), str(out), spec] + (["--resume"] if resume else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def _tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_parquet(run_dir / f"{name}.parquet")
        for name in ("accuracy", "summary", "train_log")
    }


def _weights(run_dir: Path) -> dict:
    from cl_bench.checkpoint import load_checkpoint

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


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "", "--resume" in sys.argv)
