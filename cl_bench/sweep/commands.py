"""What every executor shares: the `clbench run` command line of a grid cell, and stopping
and summarising the process that runs it. Both the plan (local executor) and the cluster
executors import from here; neither imports the other."""

from __future__ import annotations

import signal
import subprocess

from cl_bench.engine.config import RunConfig, config_args

STOP_GRACE_S = 20.0  # SIGINT lets the run mark itself interrupted; SIGKILL after this
TAIL_LINES = 5


def run_args(cfg: RunConfig) -> list[str]:
    """The `clbench run` arguments that reproduce cfg (derived from RunConfig's options)."""
    return ["run", *config_args(cfg)]


def stop_process(process: subprocess.Popen) -> None:
    """SIGINT first, so the run marks itself interrupted; SIGKILL if it has not stopped."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last non-empty lines of a worker's output, on one line."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:])
