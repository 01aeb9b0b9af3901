"""The one training path every learner goes through.

Per task the trainer asks the learner what it trains (`trainable`) and how
(`optimizer_config`), freezes everything else of the model, builds AdamW and the warm-up /
decay schedule (`cl_bench.api.optim.build_optimizer`), and then runs every step the same
way: zero_grad -> `learner.loss` (under autocast) -> backward (through a GradScaler under
fp16) -> gradient clipping when configured -> optimizer step -> schedule step ->
`learner.after_step`. Under torchrun the gradients are averaged across ranks as autograd
produces them (`Distributed.attach`), so everything after backward sees the whole batch's
gradient. Logged scalars are host-synced every `log_every` steps, where a non-finite value
stops the run. A learner that overrides `train_step` owns its step instead (the escape hatch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cl_bench.api.learner import Batch, Learner, StepInfo, Task, overrides_train_step
from cl_bench.api.optim import OptimizerConfig, build_optimizer, param_groups
from cl_bench.api.sampling import BatchOrder, to_device
from cl_bench.data.augment import RandomResizedCrops, TrainView
from cl_bench.data.world import ImageSet
from cl_bench.engine.distributed import Distributed
from cl_bench.engine.precision import autocast
from cl_bench.errors import RunFailed, UserError


class BatchStream(BatchOrder):
    """Endless shuffled batches of one task's training set; seeded by (seed, task)."""

    def __init__(self, images: ImageSet, batch_size: int, seed: int, task_index: int) -> None:
        super().__init__(len(images), batch_size, seed, task_index)
        self.images = images


@dataclass
class TaskTraining:
    """One task's optimizer state in the trainer (None optimizer: the learner owns its step)."""

    task: Task
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None
    scaler: torch.amp.GradScaler
    settings: OptimizerConfig | None

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.params)


class Trainer:
    """Builds each task's optimizer from the learner's declaration and runs its steps."""

    def __init__(
        self,
        device: torch.device,
        precision: str = "fp32",
        dist: Distributed | None = None,
        log_every: int = 10,
    ) -> None:
        self.device = device
        self.precision = precision
        self.dist = dist or Distributed()
        self.log_every = log_every

    # -- one task ---------------------------------------------------------------------
    def begin(self, learner: Learner, task: Task) -> TaskTraining | None:
        """After `learner.begin_task`: freeze all but `trainable`, build the optimizer.

        None when the learner trains nothing in this task (zeroshot, closed-form methods).
        """
        groups = param_groups(list(learner.trainable(task)))
        params = [p for g in groups for p in g["params"]]
        owns_step = overrides_train_step(learner)
        if not params and not owns_step:
            return None
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if owns_step:  # the learner sets requires_grad and builds its optimizer itself
            self.dist.attach(learner.model)
            params = params or [p for p in learner.model.parameters() if p.requires_grad]
            return TaskTraining(task, params, None, None, scaler, None)
        declared = {id(p) for p in params}
        for p in learner.model.parameters():  # what is not declared does not train
            p.requires_grad_(id(p) in declared)
        for p in params:
            p.requires_grad_(True)
        self.dist.attach(learner.model)  # torchrun: same weights, averaged gradients
        settings = learner.optimizer_config(task)
        optimizer, scheduler = build_optimizer(groups, settings, task.iterations)
        return TaskTraining(task, params, optimizer, scheduler, scaler, settings)

    def step(self, learner: Learner, run: TaskTraining, batch: Batch, info: StepInfo) -> dict:
        """One optimizer step; the scalars to log (0-dim tensors or floats, not synced)."""
        if run.optimizer is None:  # the escape hatch: the learner's own step
            with autocast(self.device, self.precision):
                scalars = learner.train_step(batch, info)
            if not isinstance(scalars, dict):
                raise UserError(
                    f"{type(learner).__qualname__}.train_step returned a {type(scalars).__name__}; return a dict of scalars, e.g. {{'loss': loss.detach()}}"
                )
            return scalars
        info = replace(info, optimizer=run.optimizer)
        run.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):  # fp32 master weights, see precision.py
            loss, scalars = _checked_loss(learner, learner.loss(batch, info))
        run.scaler.scale(loss).backward()
        logged: dict[str, Any] = {"loss": loss.detach(), **scalars}
        if run.settings is not None and run.settings.grad_clip_norm is not None:
            run.scaler.unscale_(run.optimizer)
            norm = nn.utils.clip_grad_norm_(run.params, run.settings.grad_clip_norm)
            if run.scaler.is_enabled():
                # fp16: an overflowing step is skipped by the scaler (its scale goes down),
                # not a failure; log it as such instead of a non-finite norm
                finite = torch.isfinite(norm)
                logged["grad_norm"] = torch.where(finite, norm, torch.zeros_like(norm))
                logged["skipped_steps"] = (~finite).float()
            else:
                logged["grad_norm"] = norm
        run.scaler.step(run.optimizer)
        run.scaler.update()
        logged["lr"] = run.optimizer.param_groups[0]["lr"]
        if run.scheduler is not None:
            run.scheduler.step()
        extra = learner.after_step(info)
        if extra:
            logged.update(extra)
        return logged

    def end(self) -> None:
        self.dist.detach()

    # -- the loop over a task's steps -------------------------------------------------
    def train(
        self,
        learner: Learner,
        run: TaskTraining,
        train: ImageSet,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        seed: int,
        log: list[dict[str, Any]],
        on_step: Callable[[dict[str, float] | None], None] = lambda entry: None,
        where: Path | None = None,
        view: TrainView | None = None,
    ) -> None:
        """`run.task.iterations` steps on batches of `train`; log entries appended to `log`.

        With a training `view` (--augment rrc) each image is a random resized crop of it
        (cl_bench.data.augment), drawn per (seed, task, step); the batch order is the same.
        """
        task = run.task
        stream = BatchStream(train, task.batch_size, seed, task.index)
        crops = None
        if view is not None:
            if len(view) != len(train) or view.ids_hash != train.ids_hash:
                raise RuntimeError(f"the training view of {task.name} is not its split's")
            crops = RandomResizedCrops(view, seed, task.index, train.images.shape[1])
        pending: list[tuple[int, dict[str, Any]]] = []
        learner.model.train()
        for step in range(task.iterations):
            if crops is None:
                idx = self.dist.shard_indices(stream.next_indices())  # the whole batch here
                pixels = to_device(train.images[idx], self.device)
            else:  # boxes for the whole batch, then this rank's shard: torchrun = one process
                whole = stream.next_indices()
                boxes = crops.boxes(whole, step)
                mine = self.dist.shard_indices(np.arange(len(whole)))
                idx = whole[mine]
                pixels = crops.pixels(idx, boxes[mine], self.device)
            images = normalize(pixels)
            labels = to_device(np.asarray(train.labels[idx], dtype=np.int64), self.device)
            scalars = self.step(
                learner,
                run,
                Batch(images, labels, task.text_tokens, task.index),
                StepInfo(step, task.iterations, task.index, task.num_tasks),
            )
            pending.append((step, scalars))
            entry = None
            if (step + 1) % self.log_every == 0 or step + 1 == task.iterations:
                entry = self._flush(task, pending, log, where)
                pending = []
            on_step(entry)

    def _flush(
        self,
        task: Task,
        pending: list[tuple[int, dict[str, Any]]],
        log: list[dict[str, Any]],
        where: Path | None,
    ) -> dict[str, Any]:
        """Host-sync the logged scalars every `log_every` steps; stop on a non-finite one.

        Under torchrun each scalar is averaged over the ranks (a per-image mean over this
        rank's shard becomes the batch mean), so every rank logs and stops alike.
        """
        t = task.index
        synced = _to_host(pending)
        steps = [
            {
                k: synced[id(v)] if id(v) in synced else _as_float(k, v, t, step)
                for k, v in sc.items()
            }
            for step, sc in pending
        ]
        steps = self.dist.mean_scalars(steps)
        for (step, _), values in zip(pending, steps, strict=True):
            bad = {k: v for k, v in values.items() if not math.isfinite(v)}
            if bad:
                key, value = next(iter(bad.items()))
                kept = f"; results of completed tasks are kept in {where}" if where else ""
                raise RunFailed(
                    f"non-finite {key} ({value}) at task {t + 1} ({task.name}), step {step + 1}{kept}"
                )
        entry = {"task": t + 1, "step": pending[-1][0] + 1, **steps[-1]}
        log.append(entry)
        return entry


def _checked_loss(learner: Learner, out: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """`loss()`'s answer as (0-dim tensor, dict); anything else is named as the learner's bug."""
    who = f"{type(learner).__qualname__}.loss"
    if not (isinstance(out, tuple) and len(out) == 2):
        raise UserError(f"{who} returned a {type(out).__name__}; return (loss, {{scalars}})")
    loss, scalars = out
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise UserError(f"{who}'s loss is not a 0-dim tensor; return the scalar loss to minimise")
    if not isinstance(scalars, dict):
        raise UserError(f"{who}'s scalars are a {type(scalars).__name__}; return a dict")
    if "loss" in scalars:
        raise UserError(f"{who}: the 'loss' scalar is the engine's (the loss itself); rename it")
    return loss, scalars


def _to_host(pending: list[tuple[int, dict[str, Any]]]) -> dict[int, float]:
    """The pending one-element tensors' values, by id(), with one host copy per device: one
    host sync per flush on CUDA instead of one per scalar. float64 holds every fp32/bf16/fp16
    value exactly, so each is the float `float(tensor)` gives."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for _, scalars in pending:
        for v in scalars.values():
            if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex():
                by_device.setdefault(v.device, []).append(v)
    synced: dict[int, float] = {}
    with torch.no_grad():
        for tensors in by_device.values():
            values = torch.stack([v.reshape(()).double() for v in tensors]).tolist()
            synced.update(zip((id(v) for v in tensors), values, strict=True))
    return synced


def _as_float(key: str, value: Any, t: int, step: int) -> float:
    """A logged scalar as a float; anything else is a learner bug, named with where it happened."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(
            f"the logged scalar {key!r} at task {t + 1}, step {step + 1} is a {type(value).__name__}, not a number; return plain floats or 0-dim tensors"
        ) from None
