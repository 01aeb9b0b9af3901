"""resora — plain LoRA plus ReSoRA's subspace-redundancy regulariser, merged after each task.

Paper: "Regularizing Subspace Redundancy of Low-Rank Adaptation" (ReSoRA; Zhu, Diao et al.,
ACM MM 2025, arXiv 2507.20745). No reference code was public, so the regulariser is a
reconstruction: the four forms, their normalisation and their aggregation are defined and
labelled in `cl_bench.models.redundancy`.

What it does: exactly `lora` (same targets, rank scaling, optimizer, budget and merge after
every task; see `cl_bench.learners.lora`) with the loss
    task loss + redundancy_weight · mean over blocks of ½ (R(rows of A) + R(columns of B)),
R the set-to-set linear redundancy by default (`--set redundancy=pairwise_euclidean|
pairwise_cosine|kernel|none`). The per-step value of R is logged as ``redundancy``. The
term is computed in `LoRA.train_step`, so `--set redundancy=linear` switches it on for
`lora`, `drslora` and `gated_lora` as well; `resora` only changes the default.

Reconstructed choices (labelled, not from the paper): the regulariser acts on the adapter
weights, not on projected features; default form `linear` (set-to-set) as PROTOCOL.md §4
says; `redundancy_weight` 1.0 (the term lies in [0, 1]); kernel bandwidth γ = 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.api.registry import register_learner
from cl_bench.learners.lora import LoRA
from cl_bench.models.redundancy import RedundancyForm


@register_learner("resora")
class ReSoRA(LoRA):
    description = (
        "LoRA + ReSoRA's subspace-redundancy regulariser (reconstructed), merged after each task"
    )

    @dataclass
    class Config(LoRA.Config):
        # The regulariser itself lives in `LoRA.train_step` (a plug-in for every LoRA-family
        # learner: `--set redundancy=...` on lora, drslora, gated_lora); resora switches it on.
        redundancy: RedundancyForm = "linear"  # reconstructed default: set-to-set linear
        redundancy_weight: float = 1.0  # reconstructed: the term lies in [0, 1]
        redundancy_kernel_gamma: float = 1.0  # RBF bandwidth of the `kernel` form
