"""How the engine draws batches, public so that a learner drawing its own (joint's union of
stored sets, LwF's reshuffled current set, iCaRL's exemplars) draws them exactly as the
engine would: the seeded batch order, one formula in one place, and the upload to the
device, which must not block the host."""

from __future__ import annotations

import numpy as np
import torch


class BatchOrder:
    """Endless batches of indices into `total` items: concatenated seeded permutations, sliced
    into full batches. Seeded by (seed, task index), so a run's batches do not depend on what
    ran before it (resume at a task boundary reproduces them)."""

    def __init__(self, total: int, batch_size: int, seed: int, task_index: int) -> None:
        self.total = total
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + task_index)
        self.order = torch.empty(0, dtype=torch.long)

    def next_indices(self) -> np.ndarray:
        while self.order.numel() < self.batch_size:
            self.order = torch.cat(
                [self.order, torch.randperm(self.total, generator=self.generator)]
            )
        idx, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return idx.numpy()


def to_device(data: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`. On CUDA: pinned + non-blocking, because a plain `.to("cuda")`
    from pageable memory waits for the device's queue to drain (a host sync per batch);
    elsewhere the tensor itself (no copy)."""
    if isinstance(data, torch.Tensor):
        tensor = data
    else:
        array = np.ascontiguousarray(data)
        if not array.flags.writeable:  # a read-only memmap slice: torch wants its own copy
            array = array.copy()
        tensor = torch.from_numpy(array)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
