"""The task-stream loop. The engine owns data, iterations, evaluation, seeding, checkpoints
and results; the learner owns parameters, optimizer, losses and task boundaries.

for t, task in stream: begin_task -> train_step x iterations -> end_task -> evaluate every
stream and hold-out dataset -> write rows + checkpoint atomically. Row 0 is the model before
any training (zero-shot).
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from cl_bench.analysis.provenance import peak_rss_mb, versions
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
    lock_run_dir,
    read_manifest,
    read_parquet,
    remove_temp_files,
    summarize,
    write_json,
    write_parquet,
)
from cl_bench.api.context import RunContext
from cl_bench.api.hyperparameters import build_config, config_dict
from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.api.registry import get_learner
from cl_bench.data.world import DataWorld, ImageSet
from cl_bench.data.worlds import get_world
from cl_bench.engine import checkpoint as ckpt
from cl_bench.engine.config import RunConfig
from cl_bench.engine.distributed import from_environment
from cl_bench.engine.evaluator import EvalCache, EvalResult, evaluate_all
from cl_bench.engine.precision import autocast
from cl_bench.engine.settings import Setting, resolve_setting
from cl_bench.errors import RunFailed, UserError

# Config keys that decide what the rows are (identity columns, evaluated datasets, test
# sets): --force cannot change them on --resume. The rest (iterations, batch size, learner
# hyperparameters, precision, data root) may change with --force, e.g. a lower lr after a NaN.
RESUME_FIXED_KEYS = (
    "setting",
    "learner",
    "world",
    "order",
    "shots",
    "seed",
    "max_tasks",
    "eval_limit",
    "model",
    "pretrained",
)


class Reporter(Protocol):
    """Progress sink (the CLI draws rich bars; tests pass nothing)."""

    def phase(self, label: str, total: int) -> None: ...
    def advance(self, n: int = 1, scalars: dict[str, float] | None = None) -> None: ...
    def message(self, text: str) -> None: ...


class NullReporter:
    def phase(self, label: str, total: int) -> None:
        pass

    def advance(self, n: int = 1, scalars: dict[str, float] | None = None) -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass
class RunOutcome:
    run_dir: Path
    accuracy: pd.DataFrame
    summary: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_dir(cfg: RunConfig, setting: Setting, learner_name: str, world_name: str) -> Path:
    parts = [world_name, setting.name]
    if cfg.order not in (None, "I"):
        parts.append(f"order{setting.order}")
    if cfg.shots is not None:
        parts.append(f"{setting.shots or 0}shot" if setting.shots else "fullshot")
    return Path("results") / "runs" / "-".join(parts + [learner_name, f"seed{cfg.seed}"])


def run_id_of(cfg: RunConfig, setting: Setting, learner_name: str, world_name: str) -> str:
    return default_run_dir(cfg, setting, learner_name, world_name).name


def subsample(images: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """A fixed random subset of at most `limit` images (same for every run with this seed)."""
    if limit is None or limit >= len(images):
        return images
    idx = np.sort(np.random.default_rng(seed).permutation(len(images))[:limit])
    return ImageSet(images.images[idx], images.labels[idx], f"{images.ids_hash}-first{limit}")


class BatchStream:
    """Endless shuffled batches of one task's training set; seeded by (seed, task)."""

    def __init__(self, images: ImageSet, batch_size: int, seed: int, task_index: int) -> None:
        self.images = images
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + task_index)
        self.order = torch.empty(0, dtype=torch.long)

    def next_indices(self) -> np.ndarray:
        while self.order.numel() < self.batch_size:
            self.order = torch.cat(
                [self.order, torch.randperm(len(self.images), generator=self.generator)]
            )
        idx, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return idx.numpy()


class Engine:
    """One run: resolves everything up front (fast errors), then streams the tasks."""

    def __init__(
        self, cfg: RunConfig, reporter: Reporter | None = None, world: DataWorld | None = None
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.reporter = reporter or NullReporter()
        self.setting = resolve_setting(
            cfg.setting, cfg.world, cfg.order, cfg.shots, cfg.iterations, cfg.batch_size
        )
        if cfg.max_tasks is not None:
            self.setting = _truncate(self.setting, cfg.max_tasks)
        self.learner_cls: type[Learner] = get_learner(cfg.learner)
        self.learner_cfg = build_config(self.learner_cls, cfg.overrides)
        # The run dir is checked before the world is built: refusing costs no data loading.
        world_name = world.name if world is not None else cfg.world
        self.run_dir = (
            Path(cfg.out)
            if cfg.out
            else default_run_dir(cfg, self.setting, self.learner_cls.name, world_name)
        )
        self.run_id = run_id_of(cfg, self.setting, self.learner_cls.name, world_name)
        # torchrun: every rank runs this same engine; rank 0 alone writes (distributed.py)
        self.dist = from_environment(cfg.device)
        self.dist.check_batch_size(self.setting.batch_size)
        if not self.dist.is_main:
            self.reporter = NullReporter()
        self._check_run_dir()
        self.world: DataWorld = world if world is not None else get_world(cfg)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA device is available; use --device cpu")
        self.device = (
            torch.device("cuda", self.dist.local_rank)
            if cfg.device == "cuda" and self.dist.enabled
            else torch.device(cfg.device)
        )
        self.eval_cache = EvalCache()  # text classifiers / image features across evaluations
        if cfg.threads is not None:  # shared CPUs: fewer threads than cores can be much faster
            torch.set_num_threads(cfg.threads)
        missing = self.world.check(list(self.setting.eval_datasets))
        if missing:
            raise UserError(f"the {cfg.world} world is not ready: " + " | ".join(missing))
        self.dist.barrier()  # every rank has checked the run dir before rank 0 writes to it
        try:  # last check, so a refused run leaves no empty directory behind
            if self.dist.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the run directory {self.run_dir} ({exc.strerror}); choose another --out"
            ) from None

    def _check_run_dir(self) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(
                f"--out {self.run_dir} is a file, not a directory; choose another --out"
            )
        manifest_path = self.run_dir / MANIFEST_FILE
        if not manifest_path.exists():
            if self.cfg.resume:
                raise UserError(
                    f"--resume: {self.run_dir} holds no run to resume; drop --resume to start one"
                )
            return
        status = read_manifest(self.run_dir).get("status")
        if self.cfg.resume:
            if status == "finished" and not self.cfg.force:
                raise UserError(
                    f"{self.run_dir} is already finished; nothing to resume (use --force to run it again)"
                )
            self._check_resume_config(read_manifest(self.run_dir).get("config_hash", ""))
            return
        if self.cfg.force:
            return
        hint = (
            "pass --resume to continue it"
            if status != "finished"
            else "pass --force to overwrite it"
        )
        what = "a finished run" if status == "finished" else f"an unfinished run (status {status})"
        raise UserError(f"{self.run_dir} already holds {what}; {hint}, or choose another --out")

    # ---------------------------------------------------------------------------------
    def run(self) -> RunOutcome:
        try:
            with lock_run_dir(self.run_dir) if self.dist.is_main else nullcontext():
                return self._run()
        finally:
            self.dist.close()

    def _write_json(self, data: dict[str, Any], path: Path) -> None:
        if self.dist.is_main:
            write_json(data, path)

    def _run(self) -> RunOutcome:
        cfg, setting = self.cfg, self.setting
        started = time.time()
        if self.dist.is_main:
            remove_temp_files(self.run_dir)
        resuming = (
            self.cfg.resume and (self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.META_FILE).exists()
        )
        if self.cfg.force and not self.cfg.resume and self.dist.is_main:
            self._clear_outputs()
        seed_everything(cfg.seed)
        backbone = self.world.backbone(self.device)
        self.backbone = backbone
        base_params = sum(p.numel() for p in backbone.model.parameters())
        infos = {name: self.world.dataset_info(name) for name in setting.eval_datasets}
        self.reporter.message(f"loading {len(infos)} test sets")
        test_sets = self._load_test_sets(backbone)
        ctx = self._make_context(backbone)
        learner = self.learner_cls(backbone, self.learner_cfg, ctx)
        self.learner = learner

        rows: list[dict[str, Any]] = []
        start_task = 0
        previous_tasks: list[dict[str, Any]] = []
        previous_splits: dict[str, dict[str, str]] = {}
        resumes: list[dict[str, Any]] = []  # history: a forced resume may change the config
        if resuming:
            state, start_task, config_hash, rng = ckpt.load_checkpoint(self.run_dir)
            self._check_resume_config(config_hash)
            learner.load_state_dict(state)
            ckpt.set_rng_state(rng)
            rows = self._completed_rows(start_task)
            old_manifest = read_manifest(self.run_dir)
            # Entries of tasks after the checkpoint (written before a kill) are dropped.
            previous_tasks = [t for t in old_manifest.get("tasks", []) if t["task"] <= start_task]
            previous_splits = old_manifest.get("splits", {})
            resumes = old_manifest.get("resumes", []) + [
                {
                    "at_task": start_task,
                    "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "previous_status": old_manifest.get("status"),
                    "config_hash": cfg.hash(),
                }
            ]
            ctx.derived.update(old_manifest.get("derived", {}))
            for table in old_manifest.get("record_tables", []):
                path = self.run_dir / f"{table}.parquet"
                if path.exists():
                    frame = read_parquet(path)
                    ctx.records[table] = frame[frame["after_task"] <= start_task].to_dict("records")

        manifest = {
            "run_id": self.run_id,
            "status": "running",
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": cfg.to_dict(),
            "config_hash": cfg.hash(),
            "setting": asdict(setting),
            "learner": {
                "name": self.learner_cls.name,
                "class": f"{self.learner_cls.__module__}:{self.learner_cls.__qualname__}",
                "config": config_dict(self.learner_cfg),
            },
            "world": self.world.describe(),
            "backbone": {
                "name": backbone.name,
                "pretrained": backbone.pretrained,
                "parameters": base_params,
                "width": backbone.width,
                "image_size": backbone.image_size,
            },
            "versions": versions(),
            "torch_threads": torch.get_num_threads(),
            "distributed": self.dist.describe(),
            "load_average_1min": round(os.getloadavg()[0], 2),  # context for the wall times
            "splits": {
                n: {**previous_splits.get(n, {}), "test": s.ids_hash} for n, s in test_sets.items()
            },
            "tasks": previous_tasks,
            "resumed_at_task": start_task if resuming else None,
            "resumes": resumes,
        }
        self.manifest = manifest
        self._write_json(manifest, self.run_dir / MANIFEST_FILE)
        try:
            if not resuming:
                rows = self._evaluate(learner, backbone, infos, test_sets, 0, "zeroshot")
                if self.dist.is_main:
                    write_parquet(
                        pd.DataFrame(rows, columns=ACCURACY_COLUMNS), self.run_dir / ACCURACY_FILE
                    )
            for t in range(start_task, len(setting.datasets)):
                rows += self._run_task(t, learner, backbone, ctx, infos, test_sets)
            acc = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
            summary = summarize(acc)
            if self.dist.is_main:
                write_parquet(summary, self.run_dir / SUMMARY_FILE)
            manifest["extra_inference_parameters"] = (
                sum(p.numel() for p in learner.eval_model().parameters()) - base_params
            )
            manifest["status"] = "finished"
            manifest["wall_time_s"] = round(time.time() - started, 2)
            manifest["peak_rss_mb"] = round(peak_rss_mb(), 1)
            manifest["derived"] = ctx.derived
            self._write_json(manifest, self.run_dir / MANIFEST_FILE)
            return RunOutcome(self.run_dir, acc, summary, manifest)
        except BaseException as exc:
            manifest["status"] = (
                "failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted"
            )
            manifest["error"] = f"{type(exc).__name__}: {exc}"
            manifest["derived"] = ctx.derived
            self._write_json(manifest, self.run_dir / MANIFEST_FILE)
            raise

    def _load_test_sets(self, backbone) -> dict[str, ImageSet]:
        """Every eval dataset's test split, loaded once per run and kept for every evaluation."""
        setting, cfg = self.setting, self.cfg
        return {
            n: subsample(
                self.world.load_split(n, "test", None, setting.split_seed, backbone.image_size),
                cfg.eval_limit,
                setting.split_seed,
            )
            for n in setting.eval_datasets
        }

    def _make_context(self, backbone) -> RunContext:
        setting, cfg = self.setting, self.cfg
        return RunContext(
            device=self.device,
            seed=cfg.seed,
            setting=setting.name,
            task_agnostic=setting.task_agnostic,
            world=cfg.world,
            num_tasks=len(setting.datasets),
            paper_iterations=setting.paper_iterations,
            full_finetune_lr=setting.full_finetune_lr,
            model_width=backbone.width,
            tokenize=lambda texts: backbone.tokenizer(texts).to(self.device),
            _reference=self._reference_provider(backbone),
        )

    def _reference_provider(self, backbone):
        def provide(num_images: int, num_captions: int):
            images, captions = self.world.reference_data(
                num_images, num_captions, self.cfg.seed, backbone.image_size
            )
            return backbone.normalize(
                torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            ), captions

        return provide

    def _clear_outputs(self) -> None:
        """--force without --resume: remove the old run's outputs so none can leak into this one."""
        import shutil

        tables = []
        if (self.run_dir / MANIFEST_FILE).exists():
            tables = read_manifest(self.run_dir).get("record_tables", [])
        names = [ACCURACY_FILE, SUMMARY_FILE, TRAIN_LOG_FILE, DOMAINS_FILE]
        names += [f"{t}.parquet" for t in tables]
        for name in names:
            (self.run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.run_dir / ckpt.CHECKPOINT_DIR, ignore_errors=True)

    def _completed_rows(self, completed_tasks: int) -> list[dict[str, Any]]:
        """accuracy.parquet rows of row 0 .. the checkpoint's task; later rows are re-made."""
        path = self.run_dir / ACCURACY_FILE
        old = read_parquet(path)
        old = old[old["after_task"] <= completed_tasks]
        missing = sorted(set(range(completed_tasks + 1)) - set(old["after_task"].tolist()))
        if missing:
            raise UserError(
                f"{path} lacks the rows after task(s) {missing} that the checkpoint says are done; start the run again with --force"
            )
        return old.to_dict("records")

    def _check_resume_config(self, saved_hash: str) -> None:
        if saved_hash == self.cfg.hash():
            return
        old = read_manifest(self.run_dir).get("config", {})
        new = self.cfg.identity()
        changed = [k for k, v in new.items() if old.get(k) != v]
        diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed]
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

    def _run_task(
        self, t: int, learner: Learner, backbone, ctx: RunContext, infos, test_sets
    ) -> list[dict[str, Any]]:
        setting, cfg = self.setting, self.cfg
        name = setting.datasets[t]
        info = infos[name]
        ctx.current_task = t + 1
        task_start = time.time()
        train = self.world.load_split(
            name, "train", setting.shots, setting.split_seed, backbone.image_size
        )
        self.manifest["splits"].setdefault(name, {})["train"] = train.ids_hash
        prompts = tuple(info.prompts(0))
        task = Task(
            t,
            name,
            info.classnames,
            prompts,
            ctx.tokenize(list(prompts)),
            setting.iterations,
            setting.batch_size,
            len(setting.datasets),
        )
        learner.begin_task(task)
        self.dist.attach(learner.model)  # torchrun: same weights, averaged gradients
        trainable = learner.trainable_parameter_count()
        train_log: list[dict[str, Any]] = []
        if learner.trains:
            self._train(t, task, learner, backbone, train, train_log)
        learner.end_task(task)
        self.dist.detach()
        train_s = time.time() - task_start
        eval_start = time.time()
        rows = self._evaluate(learner, backbone, infos, test_sets, t + 1, name)
        eval_s = time.time() - eval_start
        if self.dist.is_main:
            self._write_task_outputs(rows, ctx, train_log, t)
        self.manifest["tasks"].append(
            {
                "task": t + 1,
                "dataset": name,
                "train_images": len(train),
                "trainable_parameters": trainable,
                "train_time_s": round(train_s, 3),
                "eval_time_s": round(eval_s, 3),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if torch.cuda.is_available()
                else None,
            }
        )
        self.manifest["derived"] = ctx.derived
        self.manifest["record_tables"] = sorted(ctx.records)
        self._write_json(self.manifest, self.run_dir / MANIFEST_FILE)
        # Last: the checkpoint marks the task complete once everything above is on disk.
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run_dir, learner.state_dict(), t + 1, cfg.hash())
        return rows

    def _train(
        self,
        t: int,
        task: Task,
        learner: Learner,
        backbone,
        train: ImageSet,
        log: list[dict[str, Any]],
    ) -> None:
        cfg, setting = self.cfg, self.setting
        stream = BatchStream(train, setting.batch_size, cfg.seed, t)
        self.reporter.phase(
            f"task {t + 1}/{len(setting.datasets)} {task.name}: train", setting.iterations
        )
        pending: list[tuple[int, dict[str, Any]]] = []
        learner.model.train()
        for step in range(setting.iterations):
            idx = self.dist.shard_indices(stream.next_indices())  # the whole batch in one process
            images = backbone.normalize(_to_device(train.images[idx], self.device))
            labels = _to_device(np.asarray(train.labels[idx], dtype=np.int64), self.device)
            with autocast(self.device, cfg.precision):  # fp32 master weights, see precision.py
                scalars = learner.train_step(
                    Batch(images, labels, task.text_tokens, t),
                    StepInfo(step, setting.iterations, t, len(setting.datasets)),
                )
            if not isinstance(scalars, dict):
                raise UserError(
                    f"{type(learner).__qualname__}.train_step returned a {type(scalars).__name__}; return a dict of scalars, e.g. {{'loss': loss.detach()}}"
                )
            pending.append((step, scalars))
            if (step + 1) % cfg.log_every == 0 or step + 1 == setting.iterations:
                self._flush_scalars(t, task.name, pending, log)
                pending = []
            self.reporter.advance(1)

    def _flush_scalars(
        self,
        t: int,
        name: str,
        pending: list[tuple[int, dict[str, Any]]],
        log: list[dict[str, Any]],
    ) -> None:
        """Host-sync the logged scalars every `log_every` steps; stop on a non-finite one.

        Under torchrun each scalar is averaged over the ranks (a per-image mean over this
        rank's shard becomes the batch mean), so every rank logs and stops alike.
        """
        steps = [{k: _as_float(k, v, t, step) for k, v in sc.items()} for step, sc in pending]
        steps = self.dist.mean_scalars(steps)
        for (step, _), values in zip(pending, steps, strict=True):
            bad = {k: v for k, v in values.items() if not math.isfinite(v)}
            if bad:
                key, value = next(iter(bad.items()))
                raise RunFailed(
                    f"non-finite {key} ({value}) at task {t + 1} ({name}), step {step + 1}; results of completed tasks are kept in {self.run_dir}"
                )
        entry = {"task": t + 1, "step": pending[-1][0] + 1, **steps[-1]}
        log.append(entry)
        self.reporter.advance(0, entry)

    def _evaluate(
        self, learner: Learner, backbone, infos, test_sets, after_task: int, after_name: str
    ) -> list[dict[str, Any]]:
        setting = self.setting
        # this rank's share of every test set (a strided view; all of it in one process)
        eval_sets = {n: self.dist.shard_images(s) for n, s in test_sets.items()}
        total = sum(len(eval_sets[n]) for n in setting.eval_datasets)
        self.reporter.phase(f"eval after task {after_task} ({after_name})", total)
        results = evaluate_all(
            learner.eval_model(),
            backbone,
            infos,
            eval_sets,
            setting.datasets,
            tuple(h for h in setting.holdout if h not in setting.datasets),
            setting.task_agnostic,
            self.cfg.eval_batch_size,
            self.device,
            on_batch=lambda n: self.reporter.advance(n),
            cache=self.eval_cache,
            precision=self.cfg.precision,
        )
        counts = self.dist.sum_counts([(r.correct, r.total, *r.predicted_domains) for r in results])
        results = [
            EvalResult(r.dataset, r.split, c, n, tuple(domains))
            for r, (c, n, *domains) in zip(results, counts, strict=True)
        ]
        if setting.task_agnostic and self.dist.is_main:
            self._write_domains(results, after_task, after_name)
        return [self._row(r, after_task, after_name) for r in results]

    def _write_domains(self, results: list[EvalResult], after_task: int, after_name: str) -> None:
        """domains.parquet: per stream dataset, how many predictions fell in each domain's block."""
        rows = []
        for r in (r for r in results if r.predicted_domains):
            row = self._row(r, after_task, after_name)
            ident = {k: row[k] for k in RUN_COLUMNS + ["after_task", "after_task_name"]}
            for domain, count in zip(self.setting.datasets, r.predicted_domains, strict=True):
                rows.append(
                    ident | {"eval_dataset": r.dataset, "predicted_domain": domain, "count": count}
                )
        append_rows(self.run_dir / DOMAINS_FILE, rows, "after_task", after_task, DOMAIN_COLUMNS)

    def _row(self, r: EvalResult, after_task: int, after_name: str) -> dict[str, Any]:
        s = self.setting
        return {
            "run_id": self.run_id,
            "setting": s.name,
            "world": self.world.name,
            "model": self.backbone.name,
            "learner": self.learner_cls.name,
            "seed": self.cfg.seed,
            "order": s.order,
            "shots": s.shots or 0,
            "after_task": after_task,
            "after_task_name": after_name,
            "eval_dataset": r.dataset,
            "split": r.split,
            "correct": r.correct,
            "total": r.total,
            "accuracy": r.accuracy,
        }

    def _write_task_outputs(self, rows, ctx: RunContext, train_log, t: int) -> None:
        append_rows(self.run_dir / ACCURACY_FILE, rows, "after_task", t + 1, ACCURACY_COLUMNS)
        for table, table_rows in ctx.records.items():
            write_parquet(pd.DataFrame(table_rows), self.run_dir / f"{table}.parquet")
        if train_log:
            append_rows(self.run_dir / TRAIN_LOG_FILE, train_log, "task", t + 1)


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host batch on `device`: pinned + non-blocking on CUDA (no host sync per step)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _as_float(key: str, value: Any, t: int, step: int) -> float:
    """A logged scalar as a float; anything else is a learner bug, named with where it happened."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(
            f"train_step's scalar {key!r} at task {t + 1}, step {step + 1} is a {type(value).__name__}, not a number; return plain floats or 0-dim tensors"
        ) from None


def _truncate(setting: Setting, max_tasks: int) -> Setting:
    from dataclasses import replace

    return replace(setting, datasets=setting.datasets[:max_tasks])


def run(
    cfg: RunConfig, reporter: Reporter | None = None, world: DataWorld | None = None
) -> RunOutcome:
    """Run (or resume) one stream and write its results; returns the frames and the run dir.

    `world` replaces the world named by cfg.world (tests, custom data worlds).
    """
    return Engine(cfg, reporter, world).run()
