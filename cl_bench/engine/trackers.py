"""Experiment trackers (`--log tensorboard`, `--log wandb`): a run's numbers, mirrored.

A tracker receives what the recorder writes, never anything the run reads back: the training
scalars as the trainer syncs them (every `log_every` steps), the accuracy matrix after each
evaluation (row 0 included), the summary and the resolved config. Its step axis is the
global training step, (task - 1) x iterations + step, so an evaluation after task t sits at
t x iterations, at the end of that task's training. Every call runs with the Python, NumPy
and torch RNG states saved and restored, so `--log` changes no number of the run.

The packages are optional extras, imported only when asked for; a missing one is a one-line
`UserError` naming the extra. Output goes under the run directory: TensorBoard event files in
`tb/` (a `--force` run replaces them; a resumed run purges the steps it repeats), W&B run
folders in `wandb/` (or $WANDB_DIR). W&B logs online when an API key ($WANDB_API_KEY or a
netrc entry from `wandb login`) and its server are there, otherwise in its own offline mode
(`wandb sync <run folder>` uploads later); $WANDB_MODE, when set, decides instead.
"""

from __future__ import annotations

import importlib.util
import json
import math
import netrc
import os
import random
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import torch

from cl_bench.errors import UserError

TB_DIR = "tb"  # under the run directory
WANDB_DIR = "wandb"  # W&B creates <dir>/wandb/<run folder>; dir defaults to the run directory
WANDB_PROJECT = "cl-bench"  # unless $WANDB_PROJECT
WANDB_DEFAULT_URL = "https://api.wandb.ai"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # --log name -> module (= extra)


class Tracker(Protocol):
    """What the recorder tells a tracker; `describe` goes into the manifest."""

    name: str

    def log_config(self, config: dict[str, Any]) -> None: ...
    def log_scalars(self, step: int, scalars: dict[str, float]) -> None: ...
    def log_task(self, step: int, after_task: int, matrix: pd.DataFrame) -> None: ...
    def log_summary(self, step: int, summary: dict[str, float]) -> None: ...
    def describe(self) -> dict[str, Any]: ...
    def close(self, failed: bool = False) -> None: ...


def check_trackers(names: list[str]) -> None:
    """Each asked-for tracker's package is importable (checked before any data is loaded)."""
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(f"--log {name} needs the {name} extra: pip install 'cl-bench[{name}]'")


@contextmanager
def kept_rng() -> Iterator[None]:
    """The global RNG states as they were before the block (trackers must not draw from them)."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)


def matrix_markdown(matrix: pd.DataFrame) -> str:
    """The accuracy matrix (rows after_task, columns eval datasets) as a markdown table."""
    cols = [str(c) for c in matrix.columns]
    lines = ["| after task | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for after, row in matrix.iterrows():
        cells = ["" if pd.isna(v) else f"{v:.2f}" for v in row.tolist()]
        lines.append(f"| {after} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finite(values: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


# ------------------------------------------------------------------------------ TensorBoard
class TensorBoardTracker:
    """Event files for `tensorboard --logdir <run dir or a folder of run dirs>`."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def log_config(self, config: dict[str, Any]) -> None:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        self.writer.add_text("config", "```\n" + text + "\n```", 0)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def log_task(self, step: int, after_task: int, matrix: pd.DataFrame) -> None:
        for dataset, value in finite(matrix.loc[after_task].to_dict()).items():
            self.writer.add_scalar(f"accuracy/{dataset}", value, step)
        self.writer.add_text("accuracy_matrix", matrix_markdown(matrix), step)
        self.writer.flush()

    def log_summary(self, step: int, summary: dict[str, float]) -> None:
        for tag, value in finite(summary).items():
            self.writer.add_scalar(tag, value, step)
        lines = ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in finite(summary).items()]
        self.writer.add_text("summary", "\n".join(lines), step)
        self.writer.flush()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dir": str(self.log_dir)}

    def close(self, failed: bool = False) -> None:
        self.writer.close()


# ------------------------------------------------------------------------------ W&B
def wandb_mode(environ: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(the mode to give wandb.init, why). None: $WANDB_MODE is set and wandb follows it."""
    env = dict(os.environ if environ is None else environ)
    if env.get("WANDB_MODE"):
        return None, f"WANDB_MODE={env['WANDB_MODE']}"
    url = urlparse(env.get("WANDB_BASE_URL") or WANDB_DEFAULT_URL)
    host = url.hostname or ""
    if not env.get("WANDB_API_KEY") and not _netrc_has(host, env):
        return "offline", "no W&B API key ($WANDB_API_KEY or `wandb login`)"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        return "offline", f"{host} is unreachable"
    return "online", f"logged in to {host}"


def _netrc_has(host: str, env: dict[str, str]) -> bool:
    path = env.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return bool(host) and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    """One W&B run per process (a resumed run directory starts another W&B run)."""

    name = "wandb"

    def __init__(self, directory: Path, run_id: str, group: str, mode: str | None) -> None:
        import wandb

        self.wandb = wandb
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT,
            dir=str(directory),
            name=run_id,
            group=group,
            mode=mode,  # type: ignore[arg-type]  # None: $WANDB_MODE decides
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        self.mode = str(self.run.settings.mode)  # online | offline (| disabled: $WANDB_MODE)

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def log_task(self, step: int, after_task: int, matrix: pd.DataFrame) -> None:
        values = {f"accuracy/{k}": v for k, v in finite(matrix.loc[after_task].to_dict()).items()}
        columns: list[str | int] = ["after_task", *[str(c) for c in matrix.columns]]
        rows = [
            [int(i), *[None if pd.isna(v) else float(v) for v in r]] for i, r in matrix.iterrows()
        ]
        table = self.wandb.Table(columns=columns, data=rows)
        self.run.log({**values, "accuracy_matrix": table}, step=step)

    def log_summary(self, step: int, summary: dict[str, float]) -> None:
        # also a history row at the final step: an offline run's summary record is written
        # asynchronously at finish, the history row is in the log as soon as it is logged
        self.run.log(finite(summary), step=step)
        self.run.summary.update(finite(summary))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "dir": str(Path(self.run.dir).parent),  # the W&B run folder (files/ inside)
            "id": self.run.id,
            "project": self.run.project,
        }

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


# ------------------------------------------------------------------------------ the set
class Trackers:
    """The run's trackers, called as one; each call keeps the global RNG states."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def _each(self, call: Callable[[Tracker], None]) -> None:
        if not self.trackers:
            return
        with kept_rng():
            for tracker in self.trackers:
                call(tracker)

    def log_config(self, config: dict[str, Any]) -> None:
        self._each(lambda t: t.log_config(config))

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._each(lambda t: t.log_scalars(step, scalars))

    def log_task(self, step: int, after_task: int, matrix: pd.DataFrame) -> None:
        self._each(lambda t: t.log_task(step, after_task, matrix))

    def log_summary(self, step: int, summary: dict[str, float]) -> None:
        self._each(lambda t: t.log_summary(step, summary))

    def describe(self) -> list[dict[str, Any]]:
        return [t.describe() for t in self.trackers]

    def close(self, failed: bool = False) -> None:
        trackers, self.trackers = self.trackers, []
        with kept_rng():
            for tracker in trackers:
                tracker.close(failed)


def open_trackers(
    names: list[str],
    run_dir: Path,
    run_id: str,
    group: str,
    purge_step: int | None = None,
    message: Callable[[str], None] = lambda text: None,
) -> Trackers:
    """The trackers `names` (--log), writing under run_dir; `purge_step`: a resumed run's
    first repeated step (TensorBoard drops the earlier events from there on)."""
    check_trackers(names)
    opened: list[Tracker] = []
    with kept_rng():
        try:
            for name in names:
                if name == "tensorboard":
                    opened.append(TensorBoardTracker(run_dir / TB_DIR, purge_step))
                elif name == "wandb":
                    mode, why = wandb_mode()
                    directory = Path(os.environ.get("WANDB_DIR") or run_dir)
                    wb = WandbTracker(directory, run_id, group, mode)
                    opened.append(wb)
                    if wb.mode == "offline":
                        message(
                            f"W&B offline ({why}): wandb sync {wb.describe()['dir']} uploads it"
                        )
                else:  # RunConfig.validate names the valid ones
                    raise UserError(f"unknown --log {name!r}")
        except BaseException:
            for done in opened:
                done.close(failed=True)
            raise
    return Trackers(opened)
