"""What a run leaves on disk: accuracy rows, learner tables, the manifest, checkpoints.

The recorder is the one writer of a run. Under torchrun every rank builds one, and the ones
on ranks other than 0 compute the same rows but write nothing, so the engine needs no rank
checks of its own. Rows are appended per task (`results.append_rows`): a crash leaves the
completed tasks' rows, and the checkpoint, written last, marks a task complete.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import torch

from cl_bench.analysis.provenance import peak_rss_mb
from cl_bench.analysis.results import (
    ACCURACY_COLUMNS,
    ACCURACY_FILE,
    DOMAIN_COLUMNS,
    DOMAINS_FILE,
    MANIFEST_FILE,
    RUN_COLUMNS,
    SUMMARY_FILE,
    TRAIN_LOG_FILE,
    append_rows,
    summarize,
    write_json,
    write_parquet,
)
from cl_bench.api.context import RunContext
from cl_bench.engine.evaluator import EvalResult
from cl_bench.engine.rundir import RunDirectory
from cl_bench.engine.trackers import Trackers


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class TaskRecord:
    """The manifest's entry for one completed task."""

    task: int  # 1-based
    dataset: str
    train_images: int
    trainable_parameters: int
    train_time_s: float
    eval_time_s: float
    peak_rss_mb: float
    peak_cuda_mb: float | None


@dataclass
class Manifest:
    """manifest.json: the run's config, provenance and progress (written after every task)."""

    run_id: str
    config: dict[str, Any]
    config_hash: str
    setting: dict[str, Any]
    learner: dict[str, Any]  # name, class, config
    world: dict[str, Any]
    backbone: dict[str, Any]
    versions: dict[str, Any]
    torch_threads: int
    distributed: dict[str, Any]
    device: dict[str, Any]  # requested (--device) and resolved (auto -> cuda or cpu)
    status: str = "running"  # running | finished | failed | interrupted
    started: str = field(default_factory=now_utc)
    load_average_1min: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))
    splits: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset -> split -> hash
    tasks: list[dict[str, Any]] = field(default_factory=list)  # TaskRecord as dicts
    resumed_at_task: int | None = None
    resumes: list[dict[str, Any]] = field(
        default_factory=list
    )  # a forced resume may change the config
    # the protocol variant (setting version, dataset definitions, union classifier,
    # augmentation, budget) and every option that differs from the reference defaults
    protocol: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)  # values learners noted (ctx.note)
    record_tables: list[str] = field(default_factory=list)  # learner tables (ctx.record)
    trackers: list[dict[str, Any]] = field(default_factory=list)  # --log: where each writes
    extra_inference_parameters: int | None = None
    wall_time_s: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON; the fields that only a finished or failed run has are left out until set."""
        data = dataclasses.asdict(self)
        for key in ("extra_inference_parameters", "wall_time_s", "peak_rss_mb", "error"):
            if data[key] is None:
                del data[key]
        return data


class Recorder:
    """Rows, tables, the manifest and checkpoints of one run; silent on ranks other than 0."""

    def __init__(
        self,
        run_dir: RunDirectory,
        manifest: Manifest,
        identity: dict[str, Any],
        iterations: int = 0,
    ) -> None:
        self.run_dir = run_dir
        self.writes = run_dir.writer
        self.manifest = manifest
        self.identity = identity  # the RUN_COLUMNS of every row
        self.rows: list[dict[str, Any]] = []
        self.started = time.time()
        # --log: opened by the engine on the main rank once it knows where the run starts
        self.trackers = Trackers([])
        self.iterations = iterations  # per task: the trackers' step axis is the global step

    def _write_manifest(self) -> None:
        if self.writes:
            write_json(self.manifest.to_json(), self.run_dir.path / MANIFEST_FILE)

    def start(self) -> None:
        self.manifest.trackers = self.trackers.describe()
        self._write_manifest()
        m = self.manifest
        self.trackers.log_config(
            {
                "run_id": m.run_id,
                "config_hash": m.config_hash,
                "config": m.config,
                "setting": m.setting,
                "learner": m.learner,
                "backbone": m.backbone,
                "device": m.device,
            }
        )

    def train_scalars(self, entry: dict[str, Any] | None) -> None:
        """One synced entry of the train log ({task, step, loss, lr, ...}) to the trackers."""
        if entry is None:
            return
        step = (int(entry["task"]) - 1) * self.iterations + int(entry["step"])
        scalars = {f"train/{k}": float(v) for k, v in entry.items() if k not in ("task", "step")}
        self.trackers.log_scalars(step, scalars)

    # -- rows ---------------------------------------------------------------------------
    def row(self, r: EvalResult, after_task: int, after_name: str) -> dict[str, Any]:
        return {
            **self.identity,
            "after_task": after_task,
            "after_task_name": after_name,
            "eval_dataset": r.dataset,
            "split": r.split,
            "correct": r.correct,
            "total": r.total,
            "accuracy": r.accuracy,
        }

    def evaluation(
        self, results: list[EvalResult], after_task: int, after_name: str, stream: tuple[str, ...]
    ) -> None:
        """One evaluation's rows (kept; written with the task) and, task-agnostic, domains.parquet."""
        rows = [self.row(r, after_task, after_name) for r in results]
        self.rows += rows
        if self.writes and any(r.predicted_domains for r in results):
            self._write_domains(results, rows, after_task, stream)
        if self.writes:
            append_rows(
                self.run_dir.path / ACCURACY_FILE, rows, "after_task", after_task, ACCURACY_COLUMNS
            )
        if self.trackers.trackers:
            matrix = accuracy_matrix(self.rows)
            self.trackers.log_task(after_task * self.iterations, after_task, matrix)

    def _write_domains(
        self,
        results: list[EvalResult],
        rows: list[dict[str, Any]],
        after_task: int,
        stream: tuple[str, ...],
    ) -> None:
        """domains.parquet: per stream dataset, how many predictions fell in each domain's block."""
        out = []
        for r, row in zip(results, rows, strict=True):
            if not r.predicted_domains:
                continue
            ident = {k: row[k] for k in RUN_COLUMNS + ["after_task", "after_task_name"]}
            for domain, count in zip(stream, r.predicted_domains, strict=True):
                out.append(
                    ident | {"eval_dataset": r.dataset, "predicted_domain": domain, "count": count}
                )
        append_rows(self.run_dir.path / DOMAINS_FILE, out, "after_task", after_task, DOMAIN_COLUMNS)

    # -- task and run boundaries --------------------------------------------------------
    def task_done(
        self,
        record: TaskRecord,
        ctx: RunContext,
        train_log: list[dict[str, Any]],
        learner_state: dict[str, Any],
    ) -> None:
        """Tables, manifest, and last the checkpoint that marks the task complete."""
        if self.writes:
            for table, table_rows in ctx.records.items():
                write_parquet(pd.DataFrame(table_rows), self.run_dir.path / f"{table}.parquet")
            if train_log:
                append_rows(self.run_dir.path / TRAIN_LOG_FILE, train_log, "task", record.task)
        self.manifest.tasks.append(dataclasses.asdict(record))
        self.manifest.derived = ctx.derived
        self.manifest.record_tables = sorted(ctx.records)
        self._write_manifest()
        self.run_dir.save_checkpoint(learner_state, record.task)

    def finish(
        self, extra_inference_parameters: int, ctx: RunContext
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """summary.parquet and the finished manifest; (accuracy, summary) frames."""
        accuracy = pd.DataFrame(self.rows, columns=ACCURACY_COLUMNS)
        summary = summarize(accuracy)
        if self.writes:
            write_parquet(summary, self.run_dir.path / SUMMARY_FILE)
        m = self.manifest
        m.extra_inference_parameters = extra_inference_parameters
        m.status = "finished"
        m.wall_time_s = round(time.time() - self.started, 2)
        m.peak_rss_mb = round(peak_rss_mb(), 1)
        m.derived = ctx.derived
        self._write_manifest()
        steps = (int(accuracy["after_task"].max()) if len(accuracy) else 0) * self.iterations
        self.trackers.log_summary(steps, summary_scalars(summary))
        self.trackers.close()
        return accuracy, summary

    def failed(self, exc: BaseException, ctx: RunContext) -> None:
        self.manifest.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        self.manifest.error = f"{type(exc).__name__}: {exc}"
        self.manifest.derived = ctx.derived
        self._write_manifest()
        self.trackers.close(failed=True)


SUMMARY_METRICS = ("transfer", "average", "last", "holdout_transfer", "gain", "forgetting")


def accuracy_matrix(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Accuracy rows -> rows after_task 0..t, one column per eval dataset (evaluation order)."""
    frame = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    order = list(dict.fromkeys(frame["eval_dataset"]))
    wide = frame.pivot_table(
        index="after_task", columns="eval_dataset", values="accuracy", aggfunc="first"
    )
    return wide.reindex(columns=order).sort_index()


def summary_scalars(summary: pd.DataFrame) -> dict[str, float]:
    """summary.parquet as tracker scalars: summary/<metric> (the means) and
    summary/<metric>/<dataset>; NaN cells (e.g. the first dataset's Transfer) left out."""
    out: dict[str, float] = {}
    for row in summary.to_dict("records"):
        suffix = "" if row["dataset"] == "mean" else f"/{row['dataset']}"
        for metric in SUMMARY_METRICS:
            value = row[metric]
            if value is not None and not pd.isna(value):
                out[f"summary/{metric}{suffix}"] = float(value)
    return out


def task_record(
    task: int, dataset: str, train_images: int, trainable: int, train_s: float, eval_s: float
) -> TaskRecord:
    """A TaskRecord with the process's memory peaks as of now."""
    return TaskRecord(
        task=task,
        dataset=dataset,
        train_images=train_images,
        trainable_parameters=trainable,
        train_time_s=round(train_s, 3),
        eval_time_s=round(eval_s, 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
        peak_cuda_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available()
        else None,
    )
