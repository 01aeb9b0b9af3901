"""Sweep executors beyond this machine: one SLURM job per run (submitit), one Ray task per run.

Each executor runs exactly the `clbench run` argument list of the local executor
(`sweep.commands.run_args`) as a child process on a worker that shares the file system with the sweep,
so a cell's run directory is the same whichever executor ran it. Whether the child starts
fresh or resumes is decided on the worker when it starts, from the run dir's manifest: a SLURM
job requeued after preemption or a time limit, and a Ray task retried after a lost node, go
on from the last checkpointed task instead of tripping over the run dir they left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, ClassVar

from cl_bench.analysis.results import MANIFEST_FILE, read_manifest
from cl_bench.engine.config import RunConfig
from cl_bench.errors import UserError
from cl_bench.sweep.commands import STOP_GRACE_S, run_args, stop_process, tail

POLL_INTERVAL_S = 0.2
FORWARDED_ENV = ("CLBENCH_", "HF_")  # passed from the sweep to Ray workers on other nodes


def require_extra(module: str, extra: str) -> Any:
    """Import an optional dependency; a missing one is a one-line error naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f'--executor {extra} needs the {module} package; install it with pip install -e ".[{extra}]"'
        ) from None


# ------------------------------------------------------------------------------ worker side
def start_config(cfg: RunConfig) -> RunConfig | None:
    """The config to start with, from the run dir as it is now; None if it is already finished.

    No manifest -> a fresh run; an unfinished manifest -> --resume (the engine continues from
    the last checkpointed task, or starts over if none was completed)."""
    run_dir = Path(cfg.out or "")
    if not (run_dir / MANIFEST_FILE).exists():
        return replace(cfg, resume=False)
    if read_manifest(run_dir).get("status") == "finished":
        return None
    return replace(cfg, resume=True)


def _child_setup() -> None:
    """In the child, before exec: SIGINT stops the run cleanly (workers may ignore it); the
    preemption signal is for the wrapper, which then stops the child itself; and the child dies
    with its wrapper, so a killed worker never leaves a run writing behind its back."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # Ray's worker threads block SIGINT
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def child_env(cfg: RunConfig, cpus_per_run: int | None) -> dict[str, str]:
    """Without --threads, the run uses the CPUs it was given, not every core of the node."""
    env = dict(os.environ)
    if cfg.threads is None and cpus_per_run and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(cpus_per_run)
    return env


@dataclass
class CellProcess:
    """One `clbench run` child on the worker; `stop` is the graceful way to end it."""

    process: subprocess.Popen

    @classmethod
    def start(
        cls, cfg: RunConfig, program: list[str] | None, cpus_per_run: int | None, log: IO | None
    ) -> CellProcess:
        command = [*(program or [sys.executable, "-m", "cl_bench.cli"]), *run_args(cfg)]
        process = subprocess.Popen(
            command,
            stdout=log,  # None: the worker's own stdout (the SLURM job log)
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(cfg, cpus_per_run),
            start_new_session=True,  # signals reach it only through `stop`
            preexec_fn=_child_setup,
        )
        return cls(process)

    def wait(self) -> int:
        """Poll rather than block, so the wrapper's signal handlers and Ray's cancel run."""
        while (code := self.process.poll()) is None:
            time.sleep(POLL_INTERVAL_S)
        return code

    def stop(self) -> None:
        stop_process(self.process)


def run_cell(
    cfg: RunConfig,
    program: list[str] | None,
    cpus_per_run: int | None,
    log: IO | None = None,
    started: Callable[[CellProcess], None] | None = None,
) -> int:
    """Run one grid cell to its end on this worker; returns `clbench run`'s exit code."""
    start = start_config(cfg)
    if start is None:
        print(f"{cfg.out} is already finished; nothing to run", flush=True)
        return 0
    print(f"clbench run {'--resume ' if start.resume else ''}-> {cfg.out}", flush=True)
    cell = CellProcess.start(start, program, cpus_per_run, log)
    if started is not None:
        started(cell)
    try:
        code = cell.wait()
    except BaseException:  # Ctrl-C / Ray's cancel (KeyboardInterrupt): stop the run first
        cell.stop()
        raise
    print(f"clbench run exited with code {code}", flush=True)
    return code


# ------------------------------------------------------------------------------ SLURM
SLURM_FLAGS = {  # SlurmExecutor's arguments -> `clbench sweep` options
    "partition": "--slurm-partition",
    "gpus_per_run": "--gpus-per-run",
    "cpus_per_run": "--cpus-per-run",
    "mem_gb": "--mem-gb",
    "time_min": "--time-min",
    "array_parallelism": "--array-parallelism",
    "slurm_logs": "--slurm-logs",
    "cluster": "--submitit-cluster",
}


@dataclass
class SlurmRun:
    """The submitit job of one cell. `checkpoint` is submitit's requeue hook: it stops the
    child (the engine keeps its last per-task checkpoint) and requeues a fresh copy of this
    job, which resumes because it decides fresh vs --resume from the run dir when it starts."""

    config: RunConfig
    program: list[str] | None = None
    cpus_per_run: int | None = None
    cell: CellProcess | None = field(default=None, repr=False)

    def __call__(self) -> int:
        return run_cell(self.config, self.program, self.cpus_per_run, started=self._started)

    def _started(self, cell: CellProcess) -> None:
        self.cell = cell

    def checkpoint(self) -> Any:
        from submitit.helpers import DelayedSubmission

        if self.cell is not None:
            self.cell.stop()
        return DelayedSubmission(SlurmRun(self.config, self.program, self.cpus_per_run))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cell": None}  # a live process is not part of the job


@dataclass
class SlurmHandle:
    job: Any  # submitit.Job
    code: int | None = None
    failure: str = ""

    def poll(self) -> int | None:
        if self.code is not None:
            return self.code
        if not self.job.done():
            return None
        try:
            self.code = int(self.job.result())
        except Exception as exc:  # the job itself failed (killed, out of time/memory, ...)
            self.code, self.failure = 1, tail(str(exc), 2)
        return self.code

    def cancel(self) -> None:
        """scancel (the local test cluster: SIGINT); the wrapper stops the run on its way out."""
        if self.code is None and not self.job.done():
            self.job.cancel(check=False)

    def error_tail(self) -> str:
        log = tail(self.job.stdout() or "")
        return " / ".join(x for x in (self.failure, log) if x) or f"see {self.job.paths.stdout}"


@dataclass
class SlurmExecutor:
    """One SLURM job per run through submitit; at most `array_parallelism` queued at once."""

    partition: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    time_min: int | None = None
    array_parallelism: int | None = None  # None: every run of the grid at once
    slurm_logs: Path = Path("slurm-logs")
    cluster: str = "slurm"  # "local": submitit's LocalExecutor (tests, a machine without SLURM)
    program: list[str] | None = None
    flags: ClassVar[dict[str, str]] = SLURM_FLAGS  # the arguments `clbench sweep` sets

    def __post_init__(self) -> None:
        submitit = require_extra("submitit", "slurm")
        if self.time_min is None:  # submitit would silently give every job 5 minutes
            raise UserError(
                "--executor slurm needs --time-min, the time limit of one run's job in minutes "
                "(docs/scale-out.md#gpu-hours has estimates)"
            )
        self.executor = submitit.AutoExecutor(
            folder=str(Path(self.slurm_logs) / "%j"), cluster=self.cluster
        )
        params: dict[str, Any] = {
            "name": "clbench",
            "gpus_per_node": self.gpus_per_run or None,  # no --gpus-per-node=0 line
            "tasks_per_node": 1,
            "nodes": 1,
            "timeout_min": self.time_min,
            "mem_gb": self.mem_gb,
            "cpus_per_task": self.cpus_per_run,
            "slurm_partition": self.partition,
        }
        self.executor.update_parameters(**{k: v for k, v in params.items() if v is not None})

    @property
    def capacity(self) -> int:
        return self.array_parallelism or sys.maxsize

    def submit(self, job: Any) -> SlurmHandle:
        run = SlurmRun(job.config, self.program, self.cpus_per_run)
        return SlurmHandle(self.executor.submit(run))


# ------------------------------------------------------------------------------ Ray
RAY_FLAGS = {  # RayExecutor's arguments -> `clbench sweep` options
    "ray_address": "--ray-address",
    "gpus_per_run": "--gpus-per-run",
    "cpus_per_run": "--cpus-per-run",
}


def ray_run_cell(
    cfg: RunConfig, program: list[str] | None, cpus_per_run: int | None
) -> tuple[int, str]:
    """The body of a run's Ray task: (exit code, last lines of the run's console output)."""
    with tempfile.TemporaryFile() as log:
        code = run_cell(cfg, program, cpus_per_run, log)
        log.seek(0)
        return code, tail(log.read().decode(errors="replace"))


@dataclass
class RayHandle:
    ref: Any  # ray.ObjectRef of ray_run_cell
    code: int | None = None
    output: str = ""

    def poll(self) -> int | None:
        import ray

        if self.code is not None:
            return self.code
        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            self.code, self.output = ray.get(self.ref)
        except Exception as exc:  # cancelled, worker or node lost beyond retries, ...
            self.code, self.output = 1, tail(str(exc), 1) or type(exc).__name__
        return self.code

    def cancel(self) -> None:
        """KeyboardInterrupt in the task (it stops the run with SIGINT); force-kill the worker
        if that did not end it (the run, a child with PDEATHSIG, dies with it)."""
        import ray

        if self.poll() is not None:
            return
        ray.cancel(self.ref)
        ready, _ = ray.wait([self.ref], timeout=STOP_GRACE_S + 5)
        if not ready:
            ray.cancel(self.ref, force=True)
        self.poll()

    def error_tail(self) -> str:
        return self.output


@dataclass
class RayExecutor:
    """One Ray task per run; Ray queues them on the cluster's GPUs/CPUs. `ray_address` None
    starts a local cluster (or uses the one this process already joined)."""

    ray_address: str | None = None
    gpus_per_run: float = 0
    cpus_per_run: int | None = None
    program: list[str] | None = None
    flags: ClassVar[dict[str, str]] = RAY_FLAGS  # the arguments `clbench sweep` sets

    def __post_init__(self) -> None:
        ray = require_extra("ray", "ray")
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.ray_address or "local",
                    include_dashboard=False,
                    log_to_driver=False,  # run output reaches the sweep as error_tail
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(
                    f"cannot join the Ray cluster at --ray-address {self.ray_address} ({exc}); "
                    "check `ray status` on the head node"
                ) from None
        options: dict[str, Any] = {
            "num_cpus": self.cpus_per_run or 1,
            "num_gpus": self.gpus_per_run,
            "max_retries": 3,  # a lost node: the retry resumes from the run dir
        }
        forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        if forwarded:  # data / cache / weights locations, as the sweep sees them
            options["runtime_env"] = {"env_vars": forwarded}
        self.task = ray.remote(ray_run_cell).options(**options)

    @property
    def capacity(self) -> int:
        return sys.maxsize  # Ray's scheduler places tasks as resources free up

    def submit(self, job: Any) -> RayHandle:
        return RayHandle(self.task.remote(job.config, self.program, self.cpus_per_run or 1))


# ------------------------------------------------------------------------------ options
def check_gpu_request(executor: str, device: str, gpus_per_run: int | None) -> int | None:
    """GPUs per run on a cluster follow --device: a mismatch would idle GPUs or fail every run.
    --device auto takes what --gpus-per-run gives (none by default) and resolves on the node."""
    if executor not in ("slurm", "ray"):
        return gpus_per_run  # the executor's option check reports a misplaced --gpus-per-run
    if device == "auto":
        return gpus_per_run or 0
    if gpus_per_run is None:
        return 1 if device == "cuda" else 0
    if gpus_per_run > 0 and device != "cuda":
        raise UserError(
            f"--gpus-per-run {gpus_per_run} with --device {device}: the runs would hold GPUs "
            "they never use; add --device cuda or drop --gpus-per-run"
        )
    if gpus_per_run == 0 and device == "cuda":
        raise UserError(
            "--device cuda with --gpus-per-run 0: the runs would get no GPU; give --gpus-per-run 1"
        )
    return gpus_per_run
