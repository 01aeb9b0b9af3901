"""resora — plain LoRA plus ReSoRA's subspace-redundancy regulariser, merged after each task.

Paper: "Regularizing Subspace Redundancy of Low-Rank Adaptation" (ReSoRA; Zhu, Diao et al.,
ACM MM 2025, arXiv 2507.20745). No reference code was public, so the regulariser is a
reconstruction: the four forms, their normalisation and their aggregation are defined and
labelled in `cl_bench.models.redundancy`.

What it does: exactly `lora` (same targets, rank scaling, optimizer, budget and merge after
every task; see `cl_bench.learners.lora`) with the loss
    task loss + redundancy_weight · mean over blocks of ½ (R(rows of A) + R(columns of B)),
R the set-to-set linear redundancy by default (`--set redundancy=pairwise_euclidean|
pairwise_cosine|kernel|none`). The per-step value of R is logged as ``redundancy``.

Reconstructed choices (labelled, not from the paper): the regulariser acts on the adapter
weights, not on projected features; default form `linear` (set-to-set) as PROTOCOL.md §4
says; `redundancy_weight` 1.0 (the term lies in [0, 1]); kernel bandwidth γ = 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cl_bench.learner import register_learner
from cl_bench.learners.lora import LoRA
from cl_bench.models.redundancy import RedundancyForm, redundancy_loss


@register_learner("resora")
class ReSoRA(LoRA):
    description = "LoRA + ReSoRA's subspace-redundancy regulariser on A's rows and B's columns (reconstructed), merged after each task"

    @dataclass
    class Config(LoRA.Config):
        redundancy: RedundancyForm = "linear"  # reconstructed default: set-to-set linear
        redundancy_weight: float = 1.0  # reconstructed: the term lies in [0, 1]
        redundancy_kernel_gamma: float = 1.0  # RBF bandwidth of the `kernel` form

    def extra_loss(self) -> tuple[torch.Tensor | None, dict[str, Any]]:
        return redundancy_loss(
            (a.block for a in self.adapter.attached),
            self.cfg.redundancy,
            self.cfg.redundancy_weight,
            self.cfg.redundancy_kernel_gamma,
        )
