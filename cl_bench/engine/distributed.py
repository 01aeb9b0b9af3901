"""Multi-process runs under torchrun: one global batch split across ranks, one result.

`torchrun --nproc-per-node N -m cl_bench.cli run ...` starts N copies of an ordinary run. They
stay one run because every rank holds identical weights at every step:

- every rank is seeded alike, so learners build identical adapters, copies and optimizers;
  `Distributed.attach` also broadcasts rank 0's parameters when a task begins, as DDP does;
- the engine draws the same global batch on every rank and gives each rank its slice;
- gradients are averaged across ranks the moment autograd finishes each parameter's
  gradient (post-accumulate-grad hooks), so whatever the learner does after `backward()`
  (clipping, its optimizer step, a soft threshold, a weight ensemble) sees the gradient a
  single process would have computed on the whole batch.

We do not wrap the model in `DistributedDataParallel`: learners call `model.encode_image`
and own their optimizers, and the hooks give the same gradients without a wrapper.

Which losses stay exact: a mean over this rank's images (averaging the ranks' gradients gives
the mean over the global batch), a term every rank computes identically (reference data,
weight penalties), and a term that couples the images of a batch (a softmax over the batch's
images) computed on `gather_batch` outputs, as `cl_bench.api.toolkit.contrastive_loss` does.

Evaluation: each rank scores every N-th test image and the correct counts are summed.
Only rank 0 writes files (manifest, parquet, checkpoints); the others only compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cl_bench.api.collectives import active, gather_batch  # noqa: F401 - re-exported
from cl_bench.data.world import ImageSet
from cl_bench.errors import UserError


@dataclass
class Distributed:
    """This process's place in the run: rank, world size and the gradient hooks it holds."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # we called init_process_group, so we destroy it
    _hooks: list = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The one rank that writes files and draws progress."""
        return self.rank == 0

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}

    # ---------------------------------------------------------------- batches and test sets
    def check_batch_size(self, batch_size: int) -> None:
        if self.enabled and batch_size % self.world_size:
            raise UserError(
                f"batch size {batch_size} does not split evenly over {self.world_size} processes; "
                f"pass --batch-size a multiple of {self.world_size} or change --nproc-per-node"
            )

    def shard_indices(self, indices: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of a global batch."""
        if not self.enabled:
            return indices
        per_rank = len(indices) // self.world_size
        return indices[self.rank * per_rank : (self.rank + 1) * per_rank]

    def shard_images(self, images: ImageSet) -> ImageSet:
        """Every world_size-th image, starting at this rank (evaluation work split)."""
        if not self.enabled:
            return images
        sl = slice(self.rank, None, self.world_size)
        return ImageSet(
            images.images[sl],
            images.labels[sl],
            f"{images.ids_hash}-rank{self.rank}of{self.world_size}",
        )

    def sum_counts(self, counts: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Rows of counts (e.g. correct, total, per-domain predictions) summed over ranks.

        Rows may differ in length (every rank passes the same lengths in the same order).
        """
        if not self.enabled:
            return counts
        width = max((len(row) for row in counts), default=0)
        tensor = torch.zeros(len(counts), width, dtype=torch.int64)
        for i, row in enumerate(counts):
            tensor[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [
            tuple(int(v) for v in summed[: len(row)])
            for summed, row in zip(tensor.tolist(), counts, strict=True)
        ]

    def mean_scalars(self, rows: list[dict[str, float]]) -> list[dict[str, float]]:
        """Logged scalars averaged over ranks (every rank logs the same keys in the same order)."""
        if not self.enabled or not rows:
            return rows
        keys = list(rows[0])
        tensor = torch.tensor([[row[k] for k in keys] for row in rows], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= self.world_size
        return [dict(zip(keys, values, strict=True)) for values in tensor.tolist()]

    # ---------------------------------------------------------------- gradients
    def attach(self, model: nn.Module) -> None:
        """At a task's start: copy rank 0's weights everywhere and average every trainable
        parameter's gradient across ranks as soon as autograd has accumulated it."""
        if not self.enabled:
            return
        self.detach()
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor.data, src=0)
        for param in model.parameters():
            if param.requires_grad:
                self._hooks.append(param.register_post_accumulate_grad_hook(self._average))
        # Parameters without a gradient on one rank would desynchronise the collectives;
        # every rank runs the same graph, so the hooks fire in the same order everywhere.

    def _average(self, param: torch.Tensor) -> None:
        grad = param.grad
        if grad is None:  # a post-accumulate-grad hook runs once the gradient is stored
            raise RuntimeError("gradient averaging hook ran on a parameter without a gradient")
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # gloo has no AVG
        grad.div_(self.world_size)

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        self.detach()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def from_environment(device: str) -> Distributed:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), joined; one process without it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_available():
        raise UserError(
            "WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process"
        )
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
        owns = True
    return Distributed(rank, world_size, local_rank, dist.get_backend(), owns)
