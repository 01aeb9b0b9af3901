"""The task-stream loop. The engine owns data, iterations, the optimizer step, evaluation,
seeding, checkpoints and results; the learner declares what it trains and owns its losses
and task boundaries.

    evaluate (row 0: the model before any training)
    for t, task in stream:
        learner.begin_task(task)
        trainer: trainable -> optimizer; iterations x (loss -> backward -> step -> after_step)
        learner.end_task(task)
        evaluate every stream and hold-out dataset -> rows
        recorder: rows, tables, manifest, then the checkpoint that marks the task done

`Engine.__init__` resolves and checks everything that can be wrong (setting, learner,
hyperparameters, run directory, what the learner requires, the data world) before any data
is loaded; `Engine.run` is the loop. Its parts are public: `RunDirectory` (rundir.py),
`Trainer` (trainer.py), `Evaluator` (evaluator.py), `Recorder` / `Manifest` (recorder.py).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cl_bench.analysis.provenance import versions
from cl_bench.api.context import RunContext
from cl_bench.api.hyperparameters import build_config, config_dict
from cl_bench.api.learner import REQUIREMENTS, Learner, Task, TrainingSet
from cl_bench.api.registry import get_learner
from cl_bench.data.augment import Augmentation
from cl_bench.data.world import DatasetInfo, DataWorld, ImageSet
from cl_bench.data.worlds import get_world
from cl_bench.engine import checkpoint as ckpt
from cl_bench.engine.config import RunConfig, holdout_of, resolve_device
from cl_bench.engine.distributed import from_environment
from cl_bench.engine.evaluator import Evaluator, subsample
from cl_bench.engine.precision import check_precision
from cl_bench.engine.progress import NullReporter, Reporter
from cl_bench.engine.recorder import Manifest, Recorder, now_utc, task_record
from cl_bench.engine.rundir import RESUME_FIXED_KEYS, RunDirectory, default_run_dir, run_id_of
from cl_bench.engine.settings import resolve_setting
from cl_bench.engine.trackers import check_trackers, open_trackers
from cl_bench.engine.trainer import BatchStream, TaskTraining, Trainer
from cl_bench.errors import UserError
from cl_bench.models.backbone import Backbone

__all__ = [
    "RESUME_FIXED_KEYS",
    "BatchStream",
    "Engine",
    "Evaluator",
    "NullReporter",
    "Reporter",
    "RunOutcome",
    "default_run_dir",
    "run",
    "run_id_of",
    "seed_everything",
    "subsample",
]


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


def _default_config(cls: type) -> dict[str, Any] | None:
    """A learner Config's defaults as a dict; None when it cannot be built without values."""
    try:
        return config_dict(cls())
    except TypeError:
        return None


class Engine:
    """One run: resolves everything up front (fast errors), then streams the tasks."""

    def __init__(
        self, cfg: RunConfig, reporter: Reporter | None = None, world: DataWorld | None = None
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.reporter: Reporter = reporter or NullReporter()
        setting = resolve_setting(
            cfg.setting, cfg.world, cfg.order, cfg.shots, cfg.iterations, cfg.batch_size,
            cfg.union_classifier, cfg.toy_model,
        )  # fmt: skip
        if cfg.max_tasks is not None:
            setting = replace(setting, datasets=setting.datasets[: cfg.max_tasks])
        # --holdout: the run's hold-out list replaces the setting's (none: no hold-out set)
        setting = replace(setting, holdout=holdout_of(cfg.holdout, setting.holdout))
        self.setting = setting
        check_trackers(cfg.log)  # a missing extra fails before anything is loaded
        self.learner_cls: type[Learner] = get_learner(cfg.learner)
        self.learner_cfg = build_config(self.learner_cls, cfg.overrides)
        unknown = sorted(set(self.learner_cls.requires) - REQUIREMENTS)
        if unknown:
            raise UserError(
                f"{self.learner_cls.name} requires {unknown}, which the engine does not provide; valid: {', '.join(sorted(REQUIREMENTS))}"
            )
        # The run dir is checked before the world is built: refusing costs no data loading.
        world_name = world.name if world is not None else cfg.world
        path = (
            Path(cfg.out)
            if cfg.out
            else default_run_dir(cfg, setting, self.learner_cls.name, world_name)
        )
        self.run_id = run_id_of(cfg, setting, self.learner_cls.name, world_name)
        # torchrun: every rank runs this same engine; rank 0 alone writes (recorder, rundir)
        self.device_name = resolve_device(cfg.device)  # auto -> cuda when available, else cpu
        check_precision(cfg.precision, self.device_name)
        self.dist = from_environment(self.device_name)
        self.dist.check_batch_size(setting.batch_size)
        if not self.dist.is_main:
            self.reporter = NullReporter()
        self.run_dir = path
        self.directory = RunDirectory(path, cfg, writer=self.dist.is_main)
        self.directory.check()
        self.world: DataWorld = world if world is not None else get_world(cfg)
        self.world.select_protocol(setting.dataset_protocol)  # the setting's dataset definitions
        self.augment = Augmentation.resolve(cfg.augment, self.world)  # before any data loads
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA device is available; use --device cpu")
        self.device = (
            torch.device("cuda", self.dist.local_rank)
            if self.device_name == "cuda" and self.dist.enabled
            else torch.device(self.device_name)
        )
        if cfg.threads is not None:  # shared CPUs: fewer threads than cores can be much faster
            torch.set_num_threads(cfg.threads)
        missing = self.world.check(list(setting.eval_datasets))
        missing += self.world.missing_requirements(self.learner_cls.requires)
        if missing:
            raise UserError(f"the {cfg.world} world is not ready", items=missing)
        self.dist.barrier()  # every rank has checked the run dir before rank 0 writes to it
        self.directory.create()

    @property
    def learner(self) -> Learner:
        """The run's learner (after `run` or `prepare` started)."""
        return self.parts.learner

    @property
    def manifest(self) -> dict[str, Any]:
        """The run's manifest as written (after `run` or `prepare` started)."""
        return self.parts.recorder.manifest.to_json()

    # -- the run --------------------------------------------------------------------------
    def run(self) -> RunOutcome:
        try:
            with self.directory.hold():
                return self._stream()
        finally:
            self.dist.close()

    def _stream(self) -> RunOutcome:
        cfg, setting = self.cfg, self.setting
        resuming = self.directory.resumable
        if cfg.force and not cfg.resume and self.directory.writer:
            self.directory.clear_outputs()
        seed_everything(cfg.seed)
        parts = self.prepare()
        self.parts = parts
        learner, ctx, recorder = parts.learner, parts.ctx, parts.recorder
        start = self._resume(parts) if resuming else 0
        if self.directory.writer and cfg.log:  # only the main rank logs
            recorder.trackers = open_trackers(
                cfg.log,
                self.directory.path,
                self.run_id,
                f"{self.world.name}-{setting.name}",
                purge_step=start * setting.iterations + 1 if start else None,
                message=self.reporter.message,
            )
        recorder.start()
        try:
            if not resuming:
                self._evaluate(parts, 0, "zeroshot")
            for t in range(start, len(setting.datasets)):
                self._task(parts, t)
            base = sum(p.numel() for p in parts.backbone_parameters)
            extra = learner.inference_parameters() - base
            accuracy, summary = recorder.finish(extra, ctx)
            return RunOutcome(self.directory.path, accuracy, summary, recorder.manifest.to_json())
        except BaseException as exc:
            recorder.failed(exc, ctx)
            raise

    def _task(self, parts: RunParts, t: int) -> None:
        """One task: train, evaluate, record."""
        learner, ctx = parts.learner, parts.ctx
        name = self.setting.datasets[t]
        ctx.current_task = t + 1
        started = time.time()
        train, task, training = self.open_task(t, parts)
        parts.recorder.manifest.splits.setdefault(name, {})["train"] = train.ids_hash
        train_log: list[dict[str, Any]] = []
        if training is not None:
            view = self.augment.view(self.world, name, self.setting.shots, self.setting.split_seed,
                                     parts.backbone.image_size)  # fmt: skip
            self.reporter.phase(
                f"task {t + 1}/{len(self.setting.datasets)} {name}: train", task.iterations
            )
            parts.trainer.train(
                learner, training, train, parts.backbone.normalize, self.cfg.seed, train_log,
                on_step=lambda entry: self._on_step(parts, entry),
                where=self.directory.path, view=view,
            )  # fmt: skip
        learner.end_task(task)
        parts.trainer.end()
        train_s = time.time() - started
        eval_started = time.time()
        self._evaluate(parts, t + 1, name)
        record = task_record(
            t + 1,
            name,
            len(train),
            training.trainable_parameters if training is not None else 0,
            train_s,
            time.time() - eval_started,
        )
        parts.recorder.task_done(record, ctx, train_log, learner.state_dict())

    def _on_step(self, parts: RunParts, entry: dict[str, float] | None) -> None:
        self.reporter.advance(1, entry)
        parts.recorder.train_scalars(entry)

    def _evaluate(self, parts: RunParts, after_task: int, after_name: str) -> None:
        results = parts.evaluator.evaluate(
            parts.learner, f"eval after task {after_task} ({after_name})"
        )
        parts.recorder.evaluation(results, after_task, after_name, self.setting.datasets)

    # -- the parts of a run ----------------------------------------------------------------
    def prepare(self) -> RunParts:
        """Backbone, test sets, context, learner, trainer, evaluator and recorder of this run."""
        backbone = self.world.backbone(self.device)
        infos = {n: self.world.dataset_info(n) for n in self.setting.eval_datasets}
        self.reporter.message(f"loading {len(infos)} test sets")
        test_sets = self.load_test_sets(backbone)
        ctx = self.make_context(backbone)
        backbone_parameters = list(backbone.model.parameters())
        learner = self.learner_cls(backbone, self.learner_cfg, ctx)
        trainer = Trainer(self.device, self.cfg.precision, self.dist, self.cfg.log_every)
        evaluator = Evaluator(
            self.setting, backbone, infos, test_sets, self.cfg.eval_batch_size, self.device,
            self.cfg.precision, self.dist, self.reporter,
        )  # fmt: skip
        manifest = self.new_manifest(backbone, sum(p.numel() for p in backbone_parameters))
        manifest.splits = {n: {"test": s.ids_hash} for n, s in test_sets.items()}
        recorder = Recorder(
            self.directory, manifest, self.row_identity(backbone), self.setting.iterations
        )
        return RunParts(
            backbone, backbone_parameters, infos, test_sets, ctx, learner, trainer, evaluator,
            recorder,
        )  # fmt: skip

    def load_test_sets(self, backbone: Backbone) -> dict[str, ImageSet]:
        """Every eval dataset's test split, loaded once per run and kept for every evaluation."""
        s = self.setting
        return {
            n: subsample(
                self.world.load_split(n, "test", None, s.split_seed, backbone.image_size),
                self.cfg.eval_limit,
                s.split_seed,
            )
            for n in s.eval_datasets
        }

    def make_context(self, backbone: Backbone) -> RunContext:
        s, cfg, device = self.setting, self.cfg, self.device

        def reference(num_images: int, num_captions: int) -> tuple[torch.Tensor, list[str]]:
            images, captions = self.world.reference_data(
                num_images, num_captions, cfg.seed, backbone.image_size
            )
            pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device)
            return backbone.normalize(pixels), captions

        return RunContext(
            device=device,
            seed=cfg.seed,
            setting=s.name,
            task_agnostic=s.task_agnostic,
            world=cfg.world,
            num_tasks=len(s.datasets),
            paper_iterations=s.paper_iterations,
            full_finetune_lr=s.full_finetune_lr,
            full_finetune_lr_by_dataset=dict(s.full_finetune_lr_by_dataset),
            model_width=backbone.width,
            tokenize=lambda texts: backbone.tokenizer(texts).to(device),
            _reference=reference,
        )

    def open_task(self, t: int, parts: RunParts) -> tuple[ImageSet, Task, TaskTraining | None]:
        """Task t's training split and Task, after the learner's `begin_task` and the trainer's
        `begin` (None: the learner trains nothing in it); what a run does before training."""
        s = self.setting
        train = self.world.load_split(
            s.datasets[t], "train", s.shots, s.split_seed, parts.backbone.image_size
        )
        task = self.make_task(t, parts, train)
        parts.learner.begin_task(task)
        return train, task, parts.trainer.begin(parts.learner, task)

    def make_task(self, t: int, parts: RunParts, train: ImageSet) -> Task:
        s = self.setting
        info = parts.infos[s.datasets[t]]
        prompts = tuple(info.prompts(0))
        whole = TrainingSet(train.images, train.labels, parts.backbone.normalize, self.device)
        return Task(
            t, info.name, info.classnames, prompts, parts.ctx.tokenize(list(prompts)),
            s.iterations, s.batch_size, len(s.datasets), whole,
        )  # fmt: skip

    def new_manifest(self, backbone: Backbone, base_parameters: int) -> Manifest:
        cfg = self.cfg
        return Manifest(
            run_id=self.run_id,
            config=cfg.to_dict(),
            config_hash=cfg.hash(),
            setting=asdict(self.setting),
            learner={
                "name": self.learner_cls.name,
                "class": f"{self.learner_cls.__module__}:{self.learner_cls.__qualname__}",
                "config": config_dict(self.learner_cfg),
                "requires": sorted(self.learner_cls.requires),
                "custom_eval_logits": self.learner_cls.custom_eval_logits,
                "role": self.learner_cls.role,
                "uses_training_budget": self.learner_cls.uses_training_budget,
            },
            world={**self.world.describe(), "augment": self.augment.mode},
            backbone={
                "name": backbone.name,
                "pretrained": backbone.pretrained,
                "parameters": base_parameters,
                "width": backbone.width,
                "image_size": backbone.image_size,
            },
            versions=versions(),
            torch_threads=torch.get_num_threads(),
            distributed=self.dist.describe(),
            device=self.describe_device(),
            protocol=self.describe_protocol(),
        )

    def describe_protocol(self) -> dict[str, Any]:
        """Which variant of the protocol this run is, and where it leaves the references.

        A learner's `Config` defaults are its reference code's defaults (docs/fidelity.md),
        so every field set to another value is listed; so are run options that change what
        the references do (the union classifier, the augmentation, the budget on the real
        world, where the toy world's budgets are scaled by PROTOCOL.md §5 on purpose).
        """
        s = self.setting
        differs: dict[str, Any] = {}
        defaults = _default_config(type(self.learner_cfg))
        for key, value in config_dict(self.learner_cfg).items():
            if defaults is not None and key in defaults and defaults[key] != value:
                differs[f"learner.{key}"] = value
        if s.task_agnostic and s.union_classifier not in (None, "codyra"):
            differs["union_classifier"] = s.union_classifier
        reference_augment = "rrc" if self.world.name == "real" else self.augment.mode
        if self.augment.mode != reference_augment:
            differs["augment"] = self.augment.mode
        if self.world.name == "real" and s.iterations != s.paper_iterations:
            differs["iterations"] = s.iterations
        return {
            "setting": s.name,
            "setting_version": s.version,
            "dataset_protocol": s.dataset_protocol,
            "union_classifier": s.union_classifier,
            "augment": self.augment.mode,
            "iterations": s.iterations,
            "paper_iterations": s.paper_iterations,
            "differs_from_reference": differs,
        }

    def describe_device(self) -> dict[str, Any]:
        """The manifest's device: --device as given, what it resolved to, the GPU's name."""
        out: dict[str, Any] = {"requested": self.cfg.device, "resolved": str(self.device)}
        if self.device.type == "cuda":
            out["name"] = torch.cuda.get_device_name(self.device)
        return out

    def row_identity(self, backbone: Backbone) -> dict[str, Any]:
        s = self.setting
        return {
            "run_id": self.run_id,
            "setting": s.name,
            "world": self.world.name,
            "model": backbone.name,
            "learner": self.learner_cls.name,
            "seed": self.cfg.seed,
            "order": s.order,
            "shots": s.shots or 0,
        }

    def _resume(self, parts: RunParts) -> int:
        """Learner state, RNG, rows, tables and manifest history up to the checkpoint."""
        state, start, config_hash, rng = self.directory.load_checkpoint()
        self.directory.check_resume_config(config_hash)
        parts.learner.load_state_dict(state)
        ckpt.set_rng_state(rng)
        parts.recorder.rows = self.directory.completed_rows(start)
        old = self.directory.manifest()
        m = parts.recorder.manifest
        # Entries of tasks after the checkpoint (written before a kill) are dropped.
        m.tasks = [t for t in old.get("tasks", []) if t["task"] <= start]
        m.splits = {n: {**old.get("splits", {}).get(n, {}), **s} for n, s in m.splits.items()}
        m.resumed_at_task = start
        m.resumes = old.get("resumes", []) + [
            {
                "at_task": start,
                "time": now_utc(),
                "previous_status": old.get("status"),
                "config_hash": self.cfg.hash(),
            }
        ]
        parts.ctx.derived.update(old.get("derived", {}))
        for table in old.get("record_tables", []):
            rows = self.directory.table_rows(table, start)
            if rows is not None:
                parts.ctx.records[table] = rows
        return start


@dataclass
class RunParts:
    """What `Engine.prepare` builds for one run (bench and tests use the same parts)."""

    backbone: Backbone
    backbone_parameters: list[torch.nn.Parameter]
    infos: dict[str, DatasetInfo]
    test_sets: dict[str, ImageSet]
    ctx: RunContext
    learner: Learner
    trainer: Trainer
    evaluator: Evaluator
    recorder: Recorder


def run(
    cfg: RunConfig, reporter: Reporter | None = None, world: DataWorld | None = None
) -> RunOutcome:
    """Run (or resume) one stream and write its results; returns the frames and the run dir.

    `world` replaces the world named by cfg.world (tests, custom data worlds).
    """
    return Engine(cfg, reporter, world).run()
