"""individual — one model per task: at each task a fresh copy of the zero-shot model is
fine-tuned on that task alone. Its diagonal acc[t, t] is the per-task ceiling of full
fine-tuning with the task's budget (no interference from any other task).

A reference row, not a continual learner (``role = "reference"``); no anchor paper reports
it. The recipe is `finetune`'s (this class subclasses `Finetune`: Config, lr, optimizer,
schedule and task loss are inherited), and the only difference is `begin_task`, which first
restores the zero-shot weights, so the model trained on task t never saw tasks 1..t−1.

Reading its rows: after task t the evaluated model is the one fine-tuned on task t only.
The diagonal (the leaderboard's gain, acc[t, t] − acc[0, t]) is the ceiling; its Last is the
last task's specialist on every dataset and its Transfer the other specialists' accuracy on
a dataset, so neither is an upper bound of anything.

Memory: one frozen copy of the zero-shot weights for the whole run (ViT-B/16 ~0.6 GB fp32;
toy ~31 MB). On resume the copy is taken again from the backbone, which is the zero-shot
model, so the state is the fine-tuned model only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cl_bench.api.learner import Task
from cl_bench.api.registry import register_learner
from cl_bench.api.toolkit import copy_weights_, frozen_copy

from .finetune import Finetune


@register_learner("individual")
class Individual(Finetune):
    description = (
        "A fresh zero-shot model fine-tuned on each task alone (per-task ceiling; reference row)"
    )
    role = "reference"
    uses_training_budget = True

    @dataclass
    class Config(Finetune.Config):
        pass

    def __init__(self, backbone: Any, cfg: Any, ctx: Any) -> None:
        super().__init__(backbone, cfg, ctx)
        self.zero_shot = frozen_copy(self.model)

    def begin_task(self, task: Task) -> None:
        copy_weights_(self.model, self.zero_shot)
        super().begin_task(task)
