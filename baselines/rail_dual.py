"""rail_dual — RAIL, dual form: kernel ridge regression on frozen CLIP image features, with
a memory of every training feature seen so far, fused with zero-shot CLIP as rail_primal.

Reference: the RAIL official code (github.com/linghan1997/
Regression-based-Analytic-Incremental-Learning), ``dual_RAIL.py`` (the training loop and
evaluation) and ``utils.py`` (`kernel`, `kernel_ridge_regression`), ``configs/analytic_clip.yaml``.

What the code does, and cl-bench with it:

- Memory: the L2-normalised image features of every training image of every learned task
  (``feature_memory``), with one-hot labels over the classes of all learned domains,
  concatenated in stream order (earlier rows get zero columns for the new classes).
- After each task: K = k(X, X) over the whole memory, α = (K + λI)⁻¹ Y, with the Gaussian
  kernel k(x, z) = exp(−γ‖x − z‖²), γ = ``gamma: 0.1`` (the config's), λ = 0.001 (hard-coded
  in ``dual_RAIL.py``: ``kernel_ridge_regression(lamda=0.001, gamma=cfg.gamma)``; not the
  primal's ``regularization``). The solve is in float64, as ``np.mat(...).I``; cl-bench
  solves the system instead of forming the inverse (same α up to rounding).
- Inference: regression outputs k(f, X) α, fused with the zero-shot prediction exactly as in
  rail_primal (routing by the zero-shot top-1's domain, (1 − β) p + β [outputs, 0],
  β = ``fusion_weight: 0.8``); see rail_primal's docstring for the shared choices (union
  classifier, logit scale, MTIL routing by the dataset, no training augmentation).

Primal and dual: with the Gaussian kernel they are different regressions (random ReLU
features and γ = 0.1 vs an RBF kernel and λ = 0.001), so the reference implies no equality.
With ``kernel=linear`` (k(x, z) = x·z, `utils.linear_kernel` in the reference, unused by its
runner) the dual equals rail_primal with ``feature_expansion=false`` and ``regularization``
= ``ridge``: X(XᵀX + λI)⁻¹XᵀY = XXᵀ(XXᵀ + λI)⁻¹Y (tests/test_rail.py checks it).

Cost: the feature memory grows with the data (N features · D, ViT-B/16 X-TAIL 16-shot
~17 600 × 512; toy X-TAIL 3 808 × 128) and α (N · classes seen); both are kept for inference
and counted as extra inference parameters. Each fit forms the N × N Gram matrix (float64).
Sizes per task: ``rail.parquet``, the manifest's ``derived.rail``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.api.learner import Task, TrainingSet
from cl_bench.api.registry import register_learner
from cl_bench.errors import UserError

from .rail_primal import InferenceModel, RAILBase

Kernel = Literal["rbf", "linear"]


def kernel_matrix(
    x: torch.Tensor, centres: torch.Tensor, kind: Kernel, gamma: float
) -> torch.Tensor:
    """[n, N]: exp(−γ‖x − c‖²) (the reference's `kernel`) or x·c (`linear_kernel`)."""
    if kind == "linear":
        return x @ centres.T
    squared = (
        (x * x).sum(dim=1, keepdim=True)
        + (centres * centres).sum(dim=1)[None, :]
        - 2.0 * (x @ centres.T)
    ).clamp_min(0.0)
    return torch.exp(-gamma * squared)


@register_learner("rail_dual")
class RAILDual(RAILBase):
    """RAIL's dual form: kernel ridge regression over a memory of all training features."""

    description = (
        "RAIL-Dual: kernel ridge regression on a memory of frozen CLIP features, fused with "
        "zero-shot for images routed to learned domains"
    )

    @dataclass
    class Config(RAILBase.Config):
        gamma: float = 0.1  # configs/analytic_clip.yaml: gamma (RBF width)
        ridge: float = 0.001  # dual_RAIL.py: kernel_ridge_regression(lamda=0.001, ...)
        kernel: Kernel = "rbf"  # the reference's; linear = the primal without expansion

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.gamma > 0:
                raise UserError(f"--set gamma={self.gamma}: must be > 0")
            if not self.ridge > 0:
                raise UserError(f"--set ridge={self.ridge}: must be > 0")

    def __init__(self, backbone: Any, cfg: Any, ctx: Any) -> None:
        super().__init__(backbone, cfg, ctx)
        self.features: torch.Tensor | None = None  # [N, D] the feature memory
        self.labels: torch.Tensor | None = None  # [N] int64, columns of the learned classes
        self.alpha: torch.Tensor | None = None  # [N, classes seen] float64 dual coefficients
        ctx.note("rail", self.cost())

    def fit(self, task: Task, training_set: TrainingSet) -> None:
        column, _ = self.columns[task.name]
        feats, labels = [], []
        for f, y in self.training_batches(training_set, column):
            feats.append(f.to(self.dtype))
            labels.append(y.argmax(dim=1))
        new_features, new_labels = torch.cat(feats), torch.cat(labels)
        if self.features is None or self.labels is None:
            self.features, self.labels = new_features, new_labels
        else:
            self.features = torch.cat([self.features, new_features])
            self.labels = torch.cat([self.labels, new_labels])
        gram = kernel_matrix(self.features, self.features, self.cfg.kernel, self.cfg.gamma)
        gram = gram.double()
        gram.diagonal().add_(self.cfg.ridge)
        targets = F.one_hot(self.labels, self.num_seen).double()
        self.alpha = torch.linalg.solve(gram, targets)

    def regression(self, features: torch.Tensor) -> torch.Tensor:
        if self.features is None or self.alpha is None:
            raise RuntimeError("rail_dual: regression before the first task")
        k = kernel_matrix(features.to(self.dtype), self.features, self.cfg.kernel, self.cfg.gamma)
        return k.double() @ self.alpha

    def cost(self) -> dict[str, Any]:
        n = 0 if self.features is None else int(self.features.shape[0])
        dim = 0 if self.features is None else int(self.features.shape[1])
        bytes_per = 8 if self.dtype == torch.float64 else 4
        return {
            "form": "dual",
            "kernel": self.cfg.kernel,
            "classes_seen": self.num_seen,
            "inference_parameters": n * dim + n * self.num_seen,
            "solver_state_mb": round(n * n * 8 / 2**20, 3),  # the Gram matrix, at each fit
            "stored_features": n,
            "stored_features_mb": round(n * dim * bytes_per / 2**20, 3),
        }

    def eval_model(self) -> nn.Module:
        if self.features is None or self.alpha is None:
            return self.model
        return InferenceModel(self.model, {"features": self.features, "alpha": self.alpha})

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["features"] = self.features
        state["labels"] = self.labels
        state["alpha"] = self.alpha
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        device = self.ctx.device
        for key in ("features", "labels", "alpha"):
            value = state[key]
            setattr(self, key, None if value is None else value.to(device))
