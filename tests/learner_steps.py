"""Drive a learner through the engine's one training path, a step at a time (unit tests)."""

from __future__ import annotations

from typing import Any

import torch

from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.engine.trainer import TaskTraining, Trainer


class Steps:
    """begin_task + the trainer's optimizer, one `Trainer.step` per call, end_task."""

    def __init__(self, learner: Learner, device: str = "cpu") -> None:
        self.learner = learner
        self.trainer = Trainer(torch.device(device))
        self.training: TaskTraining | None = None
        self.trainable_parameters = 0

    def begin(self, task: Task) -> TaskTraining | None:
        self.learner.begin_task(task)
        self.training = self.trainer.begin(self.learner, task)
        self.trainable_parameters = (
            self.training.trainable_parameters if self.training is not None else 0
        )
        return self.training

    def step(self, batch: Batch, info: StepInfo) -> dict[str, Any]:
        if self.training is None:
            raise RuntimeError("Steps.step before begin (or the learner trains nothing)")
        return self.trainer.step(self.learner, self.training, batch, info)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self.training is None or self.training.optimizer is None:
            raise RuntimeError("no optimizer: call begin first")
        return self.training.optimizer

    def end(self, task: Task) -> None:
        self.learner.end_task(task)
        self.trainer.end()
        self.training = None


def steps(learner: Learner) -> Steps:
    """The learner's `Steps` (one per learner object, made on first use)."""
    found = learner.__dict__.get("_test_steps")
    if found is None:
        found = learner.__dict__["_test_steps"] = Steps(learner)
    return found
