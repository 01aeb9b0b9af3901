"""The engine's batch order, public so that a learner drawing its own batches (joint's union
of stored sets) draws them exactly as the engine would: one seeded formula in one place."""

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
