"""A run's directory: whether a run may start or resume there, its lock, and its checkpoint.

Refusals come before any data is loaded: an occupied directory, a resume of nothing, a
resume whose config would mix two runs' rows in one table.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from cl_bench.analysis.results import (
    ACCURACY_FILE,
    DOMAINS_FILE,
    MANIFEST_FILE,
    SUMMARY_FILE,
    TRAIN_LOG_FILE,
    lock_run_dir,
    read_manifest,
    read_parquet,
    remove_temp_files,
)
from cl_bench.data.toy.model import DEFAULT_TOY_MODEL
from cl_bench.engine import checkpoint as ckpt
from cl_bench.engine.config import RunConfig, canonical_holdout, identity_diff
from cl_bench.engine.settings import Setting
from cl_bench.errors import UserError

# Config keys that decide what the rows are (identity columns, evaluated datasets, test
# sets): --force cannot change them on --resume. The rest (iterations, batch size, learner
# hyperparameters, precision, data root) may change with --force, e.g. a lower lr after a NaN.
RESUME_FIXED_KEYS = (
    "setting",
    "learner",
    "world",
    "toy_model",
    "order",
    "shots",
    "seed",
    "max_tasks",
    "eval_limit",
    "model",
    "pretrained",
    "holdout",
)
TRACKER_DIRS = ("tb",)  # tracker output a --force run replaces (W&B runs are separate folders)


def default_run_dir(cfg: RunConfig, setting: Setting, learner_name: str, world_name: str) -> Path:
    # a non-default toy CLIP names itself after the world: toy-base-xtail-lora-seed0
    parts = [world_name, setting.name]
    if cfg.toy_model != DEFAULT_TOY_MODEL:
        parts.insert(1, cfg.toy_model)
    if cfg.order not in (None, "I"):
        parts.append(f"order{setting.order}")
    if cfg.shots is not None:
        parts.append(f"{setting.shots or 0}shot" if setting.shots else "fullshot")
    holdout = canonical_holdout(cfg.holdout)
    if holdout is not None:  # --holdout given: none -> noholdout, a,b -> holdout_a+b
        parts.append("noholdout" if holdout == "none" else "holdout_" + holdout.replace(",", "+"))
    return Path("results") / "runs" / "-".join(parts + [learner_name, f"seed{cfg.seed}"])


def run_id_of(cfg: RunConfig, setting: Setting, learner_name: str, world_name: str) -> str:
    return default_run_dir(cfg, setting, learner_name, world_name).name


class RunDirectory:
    """One run's directory. Only the main rank (`writer=True`) changes anything on disk."""

    def __init__(self, path: Path, cfg: RunConfig, writer: bool = True) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.writer = writer

    # -- may a run start here? ----------------------------------------------------------
    def check(self) -> None:
        """Refuse a file, an occupied directory, or a resume of nothing (one line each)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a directory; choose another --out")
        if not (self.path / MANIFEST_FILE).exists():
            if self.cfg.resume:
                raise UserError(
                    f"--resume: {self.path} holds no run to resume; drop --resume to start one"
                )
            return
        manifest = self.manifest()
        status = manifest.get("status")
        if self.cfg.resume:
            if status == "finished" and not self.cfg.force:
                raise UserError(
                    f"{self.path} is already finished; nothing to resume (use --force to run it again)"
                )
            self.check_resume_config(manifest.get("config_hash", ""))
            return
        if self.cfg.force:
            return
        hint = (
            "pass --resume to continue it"
            if status != "finished"
            else "pass --force to overwrite it"
        )
        what = "a finished run" if status == "finished" else f"an unfinished run (status {status})"
        raise UserError(f"{self.path} already holds {what}; {hint}, or choose another --out")

    def check_resume_config(self, saved_hash: str) -> None:
        if saved_hash == self.cfg.hash():
            return
        delta = identity_diff(self.manifest().get("config", {}), self.cfg)
        changed = list(delta)
        diff = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in delta.items()]
        # Rows carry these columns: resuming with others would mix two runs in one table.
        fixed = [k for k in changed if k in RESUME_FIXED_KEYS]
        if fixed:
            raise UserError(
                f"--resume cannot change {', '.join(fixed)} ({'; '.join(diff)}): the completed tasks' rows belong to the old run; start a new run with another --out"
            )
        if self.cfg.force:
            return
        raise UserError(
            f"--resume with a different config ({'; '.join(diff) or 'config hash differs'}); use the original flags or add --force"
        )

    def create(self) -> None:
        """Last check before the run starts, so a refused run leaves no empty directory."""
        if not self.writer:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the run directory {self.path} ({exc.strerror}); choose another --out"
            ) from None

    # -- the directory while a run holds it ----------------------------------------------
    @contextmanager
    def hold(self) -> Iterator[None]:
        """The run's lock (main rank), and leftovers of a killed writer removed."""
        with lock_run_dir(self.path) if self.writer else nullcontext():
            if self.writer:
                remove_temp_files(self.path)
            yield

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)

    @property
    def resumable(self) -> bool:
        return self.cfg.resume and (self.path / ckpt.CHECKPOINT_DIR / ckpt.META_FILE).exists()

    def clear_outputs(self) -> None:
        """--force without --resume: remove the old run's outputs so none leak into this one."""
        tables = []
        if (self.path / MANIFEST_FILE).exists():
            tables = self.manifest().get("record_tables", [])
        names = [ACCURACY_FILE, SUMMARY_FILE, TRAIN_LOG_FILE, DOMAINS_FILE]
        names += [f"{t}.parquet" for t in tables]
        for name in names:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / ckpt.CHECKPOINT_DIR, ignore_errors=True)
        for folder in TRACKER_DIRS:
            shutil.rmtree(self.path / folder, ignore_errors=True)

    def completed_rows(self, completed_tasks: int) -> list[dict[str, Any]]:
        """accuracy.parquet rows of row 0 .. the checkpoint's task; later rows are re-made."""
        path = self.path / ACCURACY_FILE
        old = read_parquet(path)
        old = old[old["after_task"] <= completed_tasks]
        missing = sorted(set(range(completed_tasks + 1)) - set(old["after_task"].tolist()))
        if missing:
            raise UserError(
                f"{path} lacks the rows after task(s) {missing} that the checkpoint says are done; start the run again with --force"
            )
        return old.to_dict("records")

    def table_rows(self, table: str, completed_tasks: int) -> list[dict[str, Any]] | None:
        """A learner table's rows up to the checkpoint's task (None: no such file)."""
        path = self.path / f"{table}.parquet"
        if not path.exists():
            return None
        frame = read_parquet(path)
        return frame[frame["after_task"] <= completed_tasks].to_dict("records")

    # -- checkpoints --------------------------------------------------------------------
    def load_checkpoint(self) -> tuple[dict[str, Any], int, str, Any]:
        """(learner state, completed tasks, config hash, RNG states), verified."""
        return ckpt.load_checkpoint(self.path)

    def save_checkpoint(self, state: dict[str, Any], completed_tasks: int) -> None:
        if self.writer:
            ckpt.save_checkpoint(self.path, state, completed_tasks, self.cfg.hash())
