"""The `Learner` API every method implements, and the registry that finds learners.

The engine owns the loop, data, evaluation, seeding, checkpoints and results; a learner
owns its parameters, optimizer, losses and what happens at task boundaries. A custom
learner is one file::

    @register_learner("mylearner")
    class MyLearner(Learner):
        def train_step(self, batch, step): ...

found by name (built-ins, the ``cl_bench.learners`` entry-point group), or by a target
``package.module:Class`` / ``path/to/file.py:Class``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # heavy imports stay out of `clbench --help`
    import torch
    from torch import nn

    from cl_bench.api.context import RunContext
    from cl_bench.models.backbone import Backbone


@dataclass(frozen=True)
class Task:
    """One step of the stream: a dataset to learn, with its training label space."""

    index: int  # 0-based position in the stream
    name: str  # dataset name, e.g. "aircraft"
    classnames: tuple[str, ...]
    prompts: tuple[str, ...]  # training prompt per class (the dataset's first template)
    text_tokens: torch.Tensor  # tokenized `prompts`, [num_classes, context_length], on device
    iterations: int
    batch_size: int
    num_tasks: int

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


@dataclass
class Batch:
    images: torch.Tensor  # float, normalized, [B, 3, H, W], on device
    labels: torch.Tensor  # int64 in the task's own label space, [B]
    text_tokens: torch.Tensor  # the task's class prompts, [num_classes, context_length]
    task_index: int


@dataclass(frozen=True)
class StepInfo:
    step: int  # 0-based optimizer step within the task
    total_steps: int
    task_index: int
    num_tasks: int

    @property
    def progress(self) -> float:
        """Fraction of the task's steps completed before this one, in [0, 1)."""
        return self.step / max(1, self.total_steps)


class Learner(ABC):
    """Base class of every continual learner.

    Subclasses set `name` (via `@register_learner`), a one-line `description`, and a
    nested `Config` dataclass whose fields are the hyperparameters (settable with
    ``--set key=value``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    trains: ClassVar[bool] = True  # False: the engine skips the training loop (zeroshot)

    @dataclass
    class Config:
        pass

    def __init__(self, backbone: Backbone, cfg: Any, ctx: RunContext) -> None:
        self.backbone = backbone
        self.model: nn.Module = backbone.model
        self.cfg = cfg
        self.ctx = ctx

    def begin_task(self, task: Task) -> None:  # noqa: B027 - optional hook
        """Called before the first step of `task`: build optimizers, adapters, copies."""

    @abstractmethod
    def train_step(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        """One optimizer step; returns scalars to log (plain floats or 0-dim tensors)."""

    def end_task(self, task: Task) -> None:  # noqa: B027 - optional hook
        """Called after the last step of `task`: merge, interpolate, prune."""

    def eval_model(self) -> nn.Module:
        """A CLIP-like module (encode_image, encode_text, logit_scale) with current weights."""
        return self.model

    def trainable_parameter_count(self) -> int:
        """Parameters the learner updates in the current task (for the cost table)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume at a task boundary (tensors or plain values)."""
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
