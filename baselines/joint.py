"""joint — cumulative training, the upper bound on Last: at each task, full fine-tuning on the
union of every training set seen so far (Avalanche's ``Cumulative`` strategy).

A reference row, not a continual learner (``role = "reference"``): it stores every training
set and so breaks the continual-learning rule it is the ceiling of. No anchor paper reports
it; the recipe is `finetune`'s (this class subclasses `Finetune`, so it inherits its Config,
its lr — the setting's full-fine-tuning lr for the task's dataset — its optimizer and
schedule, and its task loss, whatever `finetune`'s default is), and only the data differ:

- Budget: the task's own (``--iterations`` steps of ``--batch-size``): the same compute as
  every continual learner, so joint's later tasks see each stored image less often (task t of
  T: 1/t of finetune's passes over a task's data). A fresh optimizer and schedule per task,
  continuing from the previous task's weights.
- Batches: drawn uniformly from the union of tasks 0..t's training splits (in task order):
  concatenated seeded permutations of the union, sliced into full batches, the generator
  seeded by (seed, task index) exactly as the engine's own batch stream (so at task 0 joint's
  batches, and weights, equal finetune's). The engine's batch of the current task is not
  used. Under torchrun each rank takes its contiguous slice of the global batch, as the
  engine does.
- Label space at training: every image is scored against its own dataset's prompts (the
  task loss of `finetune` on each dataset's sub-batch, weighted by its share of the batch:
  with the per-image mean cross-entropy that is the mean over the whole batch). The same in
  X-TAIL and MTIL: X-TAIL's union label space is an evaluation protocol, and the continual
  learners train on their task's own classes too.
- Evaluation: the engine's CLIP classifier, as finetune.

Deviations and limits: no training augmentation for the stored images (``--augment`` acts on
the engine's batches, which joint does not use); ``task_loss=symmetric`` is refused under
torchrun (its text→image term gathers sub-batches whose sizes differ between ranks).
Memory: every training set's uint8 images, kept in the learner's state (so the checkpoint of
task t holds tasks 1..t: toy X-TAIL 3 808 images · 3 KB = 12 MB at the end; ViT-B/16
16-shot X-TAIL ~17 600 · 150 KB = 2.6 GB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cl_bench.api import collectives
from cl_bench.api.learner import Batch, StepInfo, Task
from cl_bench.api.registry import register_learner
from cl_bench.api.sampling import BatchOrder, to_device
from cl_bench.errors import UserError

from .finetune import Finetune


@dataclass
class StoredSet:
    """One task's training split as joint keeps it."""

    name: str
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N], the dataset's own label space
    text_tokens: torch.Tensor  # the dataset's training prompts, tokenized (on device)


def shard(indices: np.ndarray) -> np.ndarray:
    """This rank's contiguous slice of a global batch (the whole batch in one process)."""
    if not collectives.active():
        return indices
    world, rank = dist.get_world_size(), dist.get_rank()
    per_rank = len(indices) // world
    return indices[rank * per_rank : (rank + 1) * per_rank]


@register_learner("joint")
class Joint(Finetune):
    description = "Cumulative training: full fine-tuning on the union of all tasks so far (upper bound on Last; reference row)"
    role = "reference"
    uses_training_budget = True

    @dataclass
    class Config(Finetune.Config):
        pass

    def __init__(self, backbone: Any, cfg: Any, ctx: Any) -> None:
        super().__init__(backbone, cfg, ctx)
        if getattr(cfg, "task_loss", None) == "symmetric" and collectives.active():
            raise UserError(
                "joint: task_loss=symmetric cannot run under torchrun (its text->image term "
                "gathers per-dataset sub-batches of different sizes); use the default task loss"
            )
        self.stored: list[StoredSet] = []
        self.stream: BatchOrder | None = None
        self.starts = np.zeros(1, dtype=np.int64)  # first union index of each stored set
        self.normalize: Any = backbone.normalize

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        if task.training_set is None:
            raise UserError("joint needs the task's whole training set (task.training_set)")
        ts = task.training_set
        self.stored.append(
            StoredSet(
                task.name,
                np.asarray(ts.images),
                np.asarray(ts.labels, dtype=np.int64),
                task.text_tokens,
            )
        )
        self.starts = np.cumsum([0] + [len(s.labels) for s in self.stored])
        self.stream = BatchOrder(int(self.starts[-1]), task.batch_size, self.ctx.seed, task.index)
        self.ctx.note_stored_data(
            int(self.starts[-1]),
            sum(s.images.nbytes for s in self.stored) / 2**20,
            "training images of every task so far (uint8)",
        )

    def union_batch(self, device: torch.device) -> list[Batch]:
        """The next batch of the union, one `Batch` per dataset present (in task order)."""
        if self.stream is None:
            raise RuntimeError("joint: loss() before begin_task()")
        idx = shard(self.stream.next_indices())
        which = np.searchsorted(self.starts, idx, side="right") - 1
        parts = []
        for k in np.unique(which):
            stored = self.stored[int(k)]
            local = idx[which == k] - self.starts[k]
            pixels = to_device(stored.images[local], device)
            labels = to_device(stored.labels[local], device)
            parts.append(Batch(self.normalize(pixels), labels, stored.text_tokens, int(k)))
        return parts

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        parts = self.union_batch(batch.images.device)
        total = sum(len(p.labels) for p in parts)
        loss = torch.zeros((), device=batch.images.device)
        for part in parts:
            loss = loss + self.task_loss(part) * (len(part.labels) / total)
        return loss, {"datasets_in_batch": float(len(parts))}

    # -- persistence: the stored sets travel with the weights --------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["stored"] = [
            {
                "name": s.name,
                "images": torch.from_numpy(np.ascontiguousarray(s.images)),
                "labels": torch.from_numpy(s.labels),
                "text_tokens": s.text_tokens,
            }
            for s in self.stored
        ]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.stored = [
            StoredSet(
                str(s["name"]),
                s["images"].cpu().numpy(),
                s["labels"].cpu().numpy().astype(np.int64),
                s["text_tokens"].to(self.ctx.device),
            )
            for s in state["stored"]
        ]
