"""A grid of runs (learner x seed) through an executor, with a live view of the grid.

The sweep itself writes nothing: each cell is an ordinary `clbench run` with an explicit
`--out`, so its directory is exactly what a single run would leave. Re-running the same
sweep is idempotent: finished runs are skipped, unfinished ones continue with --resume, and
a directory that holds a run of a different configuration stops the sweep before anything
starts. Progress is read from each run's manifest, so it works for any executor whose
workers share the file system (local processes; SLURM and Ray in cl_bench.sweep.executors).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Protocol

from cl_bench.analysis.results import MANIFEST_FILE, SUMMARY_FILE, read_manifest
from cl_bench.api.registry import Registry, available_learners, get_learner
from cl_bench.engine.config import RunConfig, identity_diff
from cl_bench.errors import RunFailed, UserError
from cl_bench.sweep.commands import run_args, stop_process, tail

if TYPE_CHECKING:
    from rich.live import Live


# ------------------------------------------------------------------------------ plan
@dataclass(frozen=True, eq=False)  # hashed by identity: one key per grid cell
class Job:
    """One cell of the grid: the run's config (with --out and --resume set) and its label."""

    learner: str
    seed: int
    config: RunConfig
    action: str  # run | resume | skip

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out or "")


def parse_list(text: str, flag: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UserError(f"{flag} needs a comma-separated list, e.g. {flag} a,b,c")
    if len(set(items)) != len(items):
        raise UserError(f"{flag} {text!r} lists an entry twice")
    return items


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in parse_list(text, "--seeds")]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected integers, e.g. --seeds 0,1,2") from None
    return seeds


def expand_learners(text: str) -> list[str]:
    """A comma list of learner names; `all` means every registered learner."""
    if text.strip() == "all":
        return sorted(available_learners())
    return parse_list(text, "--learners")


def config_diff(old: dict, new: RunConfig) -> list[str]:
    """Identity keys that differ; a key the old run's manifest lacks had its default value
    (runs made before a RunConfig field existed stay comparable)."""
    return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in identity_diff(old, new).items()]


def plan_jobs(base: RunConfig, learners: list[str], seeds: list[int], out: Path) -> list[Job]:
    """Validate every cell up front (unknown learner, bad --set key, conflicting run dir)."""
    from cl_bench.api.hyperparameters import build_config
    from cl_bench.engine.loop import default_run_dir
    from cl_bench.engine.settings import resolve_setting

    setting = resolve_setting(
        base.setting, base.world, base.order, base.shots, base.iterations, base.batch_size,
        toy_model=base.toy_model,
    )  # fmt: skip
    jobs: list[Job] = []
    conflicts: list[str] = []
    for learner in learners:
        cls = get_learner(learner)
        build_config(cls, base.overrides)
        for seed in seeds:
            cfg = replace(base, learner=learner, seed=seed)
            run_dir = out / default_run_dir(cfg, setting, cls.name, base.world).name
            cfg = replace(cfg, out=str(run_dir))
            cfg.validate()
            action = "run"
            if (run_dir / MANIFEST_FILE).exists():
                manifest = read_manifest(run_dir)
                diff = config_diff(manifest.get("config", {}), cfg)
                if diff:
                    conflicts.append(f"{run_dir} ({'; '.join(diff)})")
                    continue
                action = "skip" if manifest.get("status") == "finished" else "resume"
            jobs.append(Job(learner, seed, replace(cfg, resume=action == "resume"), action))
    if conflicts:
        raise UserError(
            f"run directories hold runs of another configuration: {' | '.join(conflicts)}; "
            "choose another --out or delete them"
        )
    return jobs


# ------------------------------------------------------------------------------ executors
class Handle(Protocol):
    def poll(self) -> int | None: ...  # exit code once done, else None
    def cancel(self) -> None: ...
    def error_tail(self) -> str: ...  # last lines of the worker's output (for failures)


class Executor(Protocol):
    """Where runs execute. `capacity` = how many may be in flight at once; `flags` = the
    constructor arguments `clbench sweep` sets -> their CLI options."""

    capacity: int
    flags: ClassVar[dict[str, str]]

    def submit(self, job: Job) -> Handle: ...


@dataclass
class LocalHandle:
    process: subprocess.Popen
    log: IO[bytes]

    def poll(self) -> int | None:
        return self.process.poll()

    def cancel(self) -> None:
        stop_process(self.process)

    def error_tail(self) -> str:
        self.log.seek(0)
        return tail(self.log.read().decode(errors="replace"))


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class LocalExecutor:
    """`jobs` worker processes on this machine, each an ordinary `clbench run`.

    With several jobs and no --threads, each child gets cpu_count // jobs intra-op threads
    (OMP_NUM_THREADS, unless the caller set it), so the processes do not oversubscribe.
    """

    jobs: int = 1
    program: list[str] = field(default_factory=lambda: [sys.executable, "-m", "cl_bench.cli"])
    flags: ClassVar[dict[str, str]] = {"jobs": "--jobs"}  # the arguments `clbench sweep` sets

    @property
    def capacity(self) -> int:
        return self.jobs

    def submit(self, job: Job) -> LocalHandle:
        env = dict(os.environ)
        if self.jobs > 1 and job.config.threads is None and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        log = tempfile.TemporaryFile()  # anonymous: the worker's console output, for errors
        process = subprocess.Popen(
            [*self.program, *run_args(job.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # the sweep forwards Ctrl-C itself (see cancel)
            preexec_fn=_default_sigint,  # even when the sweep was started with SIGINT ignored
        )
        return LocalHandle(process, log)


# name -> executor class; each class's `flags` maps its constructor arguments to the
# `clbench sweep` options that set them. The cluster executors' module is imported only when
# one of them is looked up, and their optional extra only when one is built.
EXECUTORS: Registry[Executor] = Registry(
    "executor",
    targets={
        "local": "cl_bench.sweep.plan:LocalExecutor",
        "slurm": "cl_bench.sweep.executors:SlurmExecutor",
        "ray": "cl_bench.sweep.executors:RayExecutor",
    },
    flag="--executor",
    decorator="EXECUTORS.register",
    unknown="unknown --executor {name!r}{hint}; valid: {valid}",
    hint=" (did you mean {close}?)",
    sort=False,
)


def make_executor(name: str, jobs: int | None = None, **options: Any) -> Executor:
    """The executor `name`, built from the options given to it (None = not given)."""
    given = executor_options(name, jobs, **options)
    return EXECUTORS.get(name)(**given)


def executor_options(name: str, jobs: int | None = None, **options: Any) -> dict[str, Any]:
    """The options given to executor `name`, checked before anything starts: an option that
    belongs to another executor is an error, not silently ignored."""
    accepted = EXECUTORS.get(EXECUTORS.check(name)).flags
    given = {k: v for k, v in {"jobs": jobs, **options}.items() if v is not None}
    for key in given:
        if key not in accepted:
            owners = [n for n in EXECUTORS if key in EXECUTORS.get(n).flags]
            if not owners:
                raise TypeError(f"make_executor: unknown option {key!r}")
            flag = EXECUTORS.get(owners[0]).flags[key]
            raise UserError(
                f"{flag} applies to --executor {' or '.join(owners)}, not {name}; "
                f"drop {flag} or choose --executor {owners[0]}"
            )
        low = 0 if key == "gpus_per_run" else 1
        if isinstance(given[key], int | float) and given[key] < low:
            raise UserError(f"{accepted[key]} must be >= {low}, got {given[key]}")
    return given


# ------------------------------------------------------------------------------ running
@dataclass
class CellState:
    status: str  # queued | running | finished | skipped | failed
    detail: str = ""
    started_s: float = 0.0  # time.monotonic() when submitted


class Watcher(Protocol):
    def update(self, jobs: list[Job], states: dict[Job, CellState]) -> None: ...


def progress_of(run_dir: Path) -> str:
    """'k/T tasks' from the run's manifest ('' before the manifest exists)."""
    try:
        manifest = read_manifest(run_dir)
    except UserError:
        return ""
    total = len(manifest.get("setting", {}).get("datasets", []))
    return f"{len(manifest.get('tasks', []))}/{total} tasks" if total else ""


def result_of(run_dir: Path) -> str:
    """The finished run's mean Transfer / Last, for the grid view."""
    import pandas as pd

    try:
        s = pd.read_parquet(run_dir / SUMMARY_FILE)
        mean = s[s["dataset"] == "mean"].iloc[0]
        return f"T {mean['transfer']:.1f} · L {mean['last']:.1f}"
    except Exception:  # the view is informative only; the leaderboard reports real problems
        return ""


def run_sweep(
    jobs: list[Job], executor: Executor, watcher: Watcher | None = None, poll_s: float = 0.5
) -> dict[Job, CellState]:
    """Run the jobs that need it; return each cell's final state."""
    states = {
        j: CellState("skipped", result_of(j.run_dir)) if j.action == "skip" else CellState("queued")
        for j in jobs
    }
    pending = [j for j in jobs if j.action != "skip"]
    running: dict[Job, Handle] = {}
    if watcher:
        watcher.update(jobs, states)
    try:
        while pending or running:
            while pending and len(running) < executor.capacity:
                job = pending.pop(0)
                running[job] = executor.submit(job)
                states[job] = CellState(
                    "running", "resuming" if job.action == "resume" else "", time.monotonic()
                )
            for job, handle in list(running.items()):
                code = handle.poll()
                if code is None:
                    elapsed_s = time.monotonic() - states[job].started_s
                    states[job].detail = f"{progress_of(job.run_dir)} · {elapsed_s:.0f} s".lstrip(
                        " ·"
                    )
                    continue
                del running[job]
                states[job] = (
                    CellState("finished", result_of(job.run_dir))
                    if code == 0
                    else CellState("failed", f"exit {code}: {handle.error_tail()}")
                )
            if watcher:
                watcher.update(jobs, states)
            if pending or running:
                time.sleep(poll_s)
    except BaseException:
        for handle in running.values():
            handle.cancel()
        raise
    if watcher:
        watcher.update(jobs, states)
    return states


def check_states(states: dict[Job, CellState]) -> None:
    failed = [(j, s) for j, s in states.items() if s.status == "failed"]
    if failed:
        lines = "; ".join(f"{j.learner} seed {j.seed} ({s.detail})" for j, s in failed)
        raise RunFailed(
            f"{len(failed)} of {len(states)} runs failed: {lines}; fix and run the same sweep again to resume them"
        )


# ------------------------------------------------------------------------------ view
STYLES = {
    "queued": "dim",
    "running": "yellow",
    "finished": "green",
    "skipped": "cyan",
    "failed": "bold red",
}


class GridView:
    """The grid as a rich live table (learners x seeds); plain lines when not a terminal."""

    def __init__(self, learners: list[str], seeds: list[int], console=None) -> None:
        from rich.console import Console

        self.learners, self.seeds = learners, seeds
        self.console = console or Console(stderr=True)
        self.live: Live | None = None
        self.seen: dict[tuple[str, int], str] = {}

    def render(self, jobs: list[Job], states: dict[Job, CellState]):
        from rich.table import Table

        table = Table(title="clbench sweep")
        table.add_column("learner")
        for seed in self.seeds:
            table.add_column(f"seed {seed}")
        cells = {(j.learner, j.seed): states[j] for j in jobs}
        for learner in self.learners:
            row = []
            for seed in self.seeds:
                s = cells[(learner, seed)]
                text = s.status + (f" · {s.detail}" if s.detail else "")
                row.append(f"[{STYLES[s.status]}]{text[:60]}[/]")
            table.add_row(learner, *row)
        return table

    def __enter__(self) -> GridView:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4)
            self.live.start()
        return self

    def update(self, jobs: list[Job], states: dict[Job, CellState]) -> None:
        self.jobs, self.states = jobs, states
        if self.live is not None:
            self.live.update(self.render(jobs, states))
            return
        for j in jobs:
            s = states[j]
            if self.seen.get((j.learner, j.seed)) != s.status:
                self.seen[(j.learner, j.seed)] = s.status
                detail = f" ({s.detail})" if s.detail else ""
                self.console.print(f"{j.learner} seed {j.seed}: {s.status}{detail}", markup=False)

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()
        elif getattr(self, "states", None):
            self.console.print(self.render(self.jobs, self.states))
