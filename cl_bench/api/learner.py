"""The `Learner` API every method implements.

The engine owns the loop, data, the optimizer step, evaluation, seeding, checkpoints and
results; a learner declares what it trains (`trainable`, its `Config`'s optimizer
settings) and owns its losses and task boundaries. A custom learner is one file::

    @register_learner("mylearner")
    class MyLearner(Learner):
        @dataclass
        class Config(OptimizerConfig):
            lr: float = 1e-5

        def trainable(self, task):
            return [p for p in self.model.parameters() if p.requires_grad]

        def loss(self, batch, step):
            loss = contrastive_loss(clip_logits(self.model, batch.images, batch.text_tokens), batch.labels)
            return loss, {}

found by name (built-ins, the ``cl_bench.learners`` entry-point group), or by a target
``package.module:Class`` / ``path/to/file.py:Class`` (`cl_bench.api.registry`).

Per task the engine calls: `begin_task` -> `trainable` (the optimizer is built from it) ->
for every step [`loss` -> backward -> clip -> optimizer step -> schedule -> `after_step`]
-> `end_task` -> evaluation with `eval_model` (and `eval_logits` where a learner fuses or
routes predictions). A method whose step cannot be written as a loss may override
`train_step` instead (the escape hatch); no built-in learner does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from cl_bench.api.optim import OptimizerConfig, ParamGroups

if TYPE_CHECKING:  # heavy imports stay out of `clbench --help`
    import numpy as np
    import torch
    from torch import nn

    from cl_bench.api.context import RunContext
    from cl_bench.models.backbone import Backbone

# What a learner may declare in `requires`; the engine checks each before loading any data.
REQUIREMENTS = frozenset({"reference_data"})


@dataclass(frozen=True)
class TrainingSet:
    """A task's whole training split, for methods that need all of it at once (iCaRL's
    herding, RAIL's closed-form regression): uint8 images and labels in the task's label
    space, in the split's order. The engine's step loop draws its batches from the same set."""

    images: np.ndarray  # uint8 [N, H, W, 3] (array or read-only memmap)
    labels: np.ndarray  # int [N], the task's own label space
    normalize: Callable[[torch.Tensor], torch.Tensor]  # uint8 NHWC -> normalized float NCHW
    device: torch.device

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalized images, int64 labels) on the device, in order, `batch_size` at a time."""
        import numpy as np

        from cl_bench.api.sampling import to_device

        for start in range(0, len(self), batch_size):
            images = self.normalize(to_device(self.images[start : start + batch_size], self.device))
            labels = np.asarray(self.labels[start : start + batch_size], dtype=np.int64)
            yield images, to_device(labels, self.device)


@dataclass(frozen=True)
class LabelSpace:
    """What one evaluated dataset is scored against, for `Learner.eval_logits`.

    `classnames` are the classes of the space in order: the dataset's own (MTIL, hold-out
    sets) or the union of every stream domain's classes (X-TAIL), `domains` and
    `domain_starts` the blocks that union is made of, `label_offset` where the evaluated
    dataset's labels start. `text_features` is the engine's classifier for the current
    `eval_model` (normalized, template-averaged, [num_classes, D]); `prompts` holds, per
    class, the prompts its row averages (one per template, or the one union prompt), for a
    learner that encodes the classifier with its own text encoder (MoE-Adapters' routing).
    """

    dataset: str
    classnames: tuple[str, ...]
    text_features: torch.Tensor
    domains: tuple[str, ...]
    domain_starts: tuple[int, ...]
    label_offset: int
    prompts: tuple[tuple[str, ...], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


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
    training_set: TrainingSet | None = None  # the whole split (None only in hand-made tasks)

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
    # The engine's optimizer for this task, for `after_step` hooks that read its state
    # (CLIP-AST's second moments); None where no optimizer runs.
    optimizer: torch.optim.Optimizer | None = None

    @property
    def progress(self) -> float:
        """Fraction of the task's steps completed before this one, in [0, 1)."""
        return self.step / max(1, self.total_steps)


class Learner:
    """Base class of every continual learner.

    Subclasses set `name` (via `@register_learner`), a one-line `description`, and a
    nested `Config` dataclass whose fields are the hyperparameters (settable with
    ``--set key=value``); a learner that trains inherits `OptimizerConfig` in it.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # What the learner needs from the run (e.g. {"reference_data"}): checked before any
    # data is loaded, so a run that cannot work fails in seconds.
    requires: ClassVar[frozenset[str]] = frozenset()
    # True: `eval_logits` supplies the evaluation logits (routing, fusion); the engine then
    # scores images through it and keeps no image features across evaluations.
    custom_eval_logits: ClassVar[bool] = False
    # "continual" rows are ranked in a leaderboard; "reference" rows (zero-shot, the joint and
    # individual upper bounds) are shown beside them and never ranked with them.
    role: ClassVar[Literal["continual", "reference"]] = "continual"
    # False: the results do not depend on --iterations or --batch-size (zero-shot, closed-form
    # learners), so such runs join a leaderboard of any training budget.
    uses_training_budget: ClassVar[bool] = True

    @dataclass
    class Config:
        pass

    def __init__(self, backbone: Backbone, cfg: Any, ctx: RunContext) -> None:
        self.backbone = backbone
        self.model: nn.Module = backbone.model
        self.cfg = cfg
        self.ctx = ctx

    # -- what trains, and how ----------------------------------------------------------
    def begin_task(self, task: Task) -> None:  # noqa: B027 - optional hook
        """Before the task's first step: adapters, copies, memories (`task.training_set`)."""

    def trainable(self, task: Task) -> ParamGroups:
        """The parameters (or torch param groups) the engine's optimizer updates in `task`.

        Called once per task, after `begin_task`. Empty (the default): nothing trains and
        the engine runs no steps for this learner.
        """
        return []

    def optimizer_config(self, task: Task) -> OptimizerConfig:
        """The optimizer settings for `task`: the `Config`'s `OptimizerConfig` fields, with
        `lr=None` resolved to the setting's full-fine-tuning lr for this task's dataset."""
        if not isinstance(self.cfg, OptimizerConfig):
            raise TypeError(
                f"{type(self).__qualname__}.Config must inherit cl_bench.OptimizerConfig to train"
            )
        base = OptimizerConfig(
            **{name: getattr(self.cfg, name) for name in OptimizerConfig.__dataclass_fields__}
        )
        if base.lr is not None:
            return base
        return replace(base, lr=self.ctx.full_finetune_lr_for(task.name))

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        """(the loss to minimise, extra scalars to log: floats or 0-dim tensors)."""
        raise NotImplementedError(f"{type(self).__qualname__} trains but defines no loss()")

    def after_step(self, step: StepInfo) -> dict[str, Any] | None:
        """After each optimizer step (proximal steps, running averages); scalars to log."""
        return None

    def train_step(self, batch: Batch, step: StepInfo) -> dict[str, Any]:
        """The escape hatch: a learner that overrides this owns its whole step (backward,
        optimizer, schedule) and returns scalars to log; the engine then builds no optimizer.
        Only for a method whose update is not a gradient step on a loss."""
        raise NotImplementedError

    def end_task(self, task: Task) -> None:  # noqa: B027 - optional hook
        """After the task's last step: merge, interpolate, prune."""

    # -- evaluation --------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        """A CLIP-like module (encode_image, encode_text, logit_scale) with current weights."""
        return self.model

    def inference_parameters(self) -> int:
        """Parameters one test image runs through; the manifest's extra inference parameters
        are this minus the backbone's. Default: every parameter of `eval_model()`. Override
        where evaluation runs a subset of what the eval model holds (MoE's top-k experts)."""
        return sum(p.numel() for p in self.eval_model().parameters())

    def eval_logits(self, images: torch.Tensor, space: LabelSpace) -> torch.Tensor:
        """[B, space.num_classes] scores of normalized test images; only called when the
        class sets `custom_eval_logits = True`."""
        raise NotImplementedError(
            f"{type(self).__qualname__} sets custom_eval_logits but defines no eval_logits()"
        )

    # -- persistence -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume at a task boundary (tensors or plain values)."""
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])


def overrides_train_step(learner: Learner) -> bool:
    """True when the learner owns its whole step (the `train_step` escape hatch)."""
    return type(learner).train_step is not Learner.train_step
