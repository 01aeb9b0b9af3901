"""rail_primal — RAIL, primal form: recursive ridge regression on projected frozen CLIP
image features, fused with zero-shot CLIP for images routed to learned domains.

Reference: "Advancing Cross-domain Discriminability in Continual Learning of Vision-Language
Models" (Xu et al., NeurIPS 2024), official code github.com/linghan1997/
Regression-based-Analytic-Incremental-Learning: ``primal_RAIL.py``
(`continual_clip_adaptor.analytic_adaption`, the evaluation loop), ``configs/analytic_clip.yaml``.

What the code does, and cl-bench with it:

- Features: the frozen CLIP's L2-normalised image features f, expanded by a fixed random
  layer φ(f) = ReLU(P f), P of shape [hidden_dim, D] drawn once like a bias-free
  ``nn.Linear`` (uniform ±1/√D), never trained (``feature_expansion: 1``,
  ``hidden_dim: 15000`` for ViT-B/16's D = 512). The CLIP is never updated: `trainable()` is
  empty and the engine runs no steps (``uses_training_budget = False``: --iterations and
  --batch-size change nothing).
- Labels: one-hot over the classes of every domain learned so far, concatenated in stream
  order; a new task appends its classes as zero columns of W (``cfg.increment``).
- First task: R = (ΣφᵀΦ + γI)⁻¹ (inverted in float64, as ``np.mat(...).I``), W = R ΣΦᵀY,
  γ = ``regularization: 0.1``. Later tasks, per batch of ``batch_size: 128`` images:
  R ← R − R Φᵀ (I + Φ R Φᵀ)⁺ Φ R,  W ← W + R Φᵀ (Y − Φ W). After every task W equals the
  ridge solution on all data seen so far, (ΣΦᵀΦ + γI)⁻¹ ΣΦᵀY, without storing any of it
  (tests/test_rail.py checks that identity in float64).
- Inference (X-TAIL): p = softmax(s · f Tᵀ) over the union classifier T of all stream
  domains; an image whose zero-shot top-1 lies in a learned domain's block gets
  (1 − β) p + β [φ(f) W, 0 for the classes of unseen domains], β = ``fusion_weight: 0.8``;
  every other image keeps the zero-shot prediction. So on a domain not yet learned, every
  image zero-shot classifies correctly stays correct (its top-1 is in the unseen block, it
  is not routed); only images zero-shot already got wrong can change.

cl-bench choices and deviations (docs/learners.md, fidelity rows):

- hidden_dim None (default) = round(15000 · D / 512): the reference's 15000 for its 512-d
  ViT-B/16 features, the same expansion ratio for other widths (toy CLIP D = 128: 3750).
  PROTOCOL.md §5's rule that values depending on the model are derived at run time from
  it; recorded in the manifest (``derived.rail``). No other §5 rule applies (no lr, no rank,
  no step schedule).
- The zero-shot classifier is the engine's (`LabelSpace.text_features`): the run's union
  classifier (``--union-classifier rail`` gives the reference's one prompt
  'a photo of a {}.' per class; the default is CoDyRA's first template per dataset) and,
  for hold-out and MTIL sets, the template-averaged one. So images that are not routed get
  exactly the zeroshot learner's prediction. s = the model's own logit scale (OpenAI CLIP's
  is the reference's literal 100.; the toy CLIP's is its own, ~56); ``zero_shot_scale``
  sets it.
- MTIL (task-incremental, own label spaces; the reference has no MTIL code): the dataset is
  known, so the router is the dataset's identity: every image of a learned dataset is fused
  with W's block of that dataset's classes, every image of an unseen or hold-out dataset
  gets the zero-shot prediction (so MTIL Transfer equals zeroshot's exactly).
- Training images are the task's whole split (`task.training_set`) without the reference's
  training augmentation (RandomResizedCrop 0.9-1.0; --augment applies to the step loop
  only). The closed form runs at `end_task`, features in fp32 with the model in eval mode;
  R and W in ``dtype`` (float32 as the reference; float64 for exact algebra).
- Scores returned by `eval_logits`: fused probabilities for routed images, the raw zero-shot
  cosine scores (same top-1 as p) for the others, so no rounding can move a zero-shot
  prediction.
- The reference evaluates only learned domains by default (``eval_adapter: 1``); cl-bench
  evaluates every dataset after every task (PROTOCOL.md §1).

Cost: extra inference parameters P (hidden_dim·D) + W (hidden_dim·classes seen); training
state R (hidden_dim², ViT-B/16 900 MB in fp32; toy 56 MB), kept for the next task, not for
inference. Both sizes go to the manifest, ``derived.rail``, and per task to ``rail.parquet``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.api.learner import LabelSpace, Learner, Task, TrainingSet
from cl_bench.api.registry import register_learner
from cl_bench.errors import UserError
from cl_bench.models.backbone import as_clip

Dtype = Literal["float32", "float64"]

REFERENCE_HIDDEN_DIM = 15000  # configs/analytic_clip.yaml, for ViT-B/16
REFERENCE_FEATURE_DIM = 512  # primal_RAIL.py: self.feature_dim = 512 (ViT-B/16)


def derived_hidden_dim(feature_dim: int) -> int:
    """The reference's 15000 hidden units at 512-d features, at the same ratio for `feature_dim`."""
    return max(1, round(REFERENCE_HIDDEN_DIM * feature_dim / REFERENCE_FEATURE_DIM))


def random_projection(feature_dim: int, hidden_dim: int, seed: int) -> torch.Tensor:
    """[hidden_dim, feature_dim] uniform in ±1/√D: a bias-free nn.Linear's default init, drawn
    on the CPU from its own generator so every device gets the same layer."""
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / feature_dim**0.5
    weight = torch.rand(hidden_dim, feature_dim, generator=generator, dtype=torch.float64)
    return ((2.0 * weight - 1.0) * bound).float()


class RecursiveRidge:
    """Ridge regression over a growing label space, solved recursively (the reference's
    `analytic_adaption`): `first` inverts the first task's autocorrelation, `update` adds a
    later task batch by batch through the Woodbury identity, storing only R and W."""

    def __init__(self, regularization: float, dtype: torch.dtype) -> None:
        self.regularization = regularization
        self.dtype = dtype
        self.R: torch.Tensor | None = None  # [H, H] (ΣΦᵀΦ + γI)⁻¹
        self.W: torch.Tensor | None = None  # [H, C] regression weights

    def first(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """R = (ΣΦᵀΦ + γI)⁻¹, W = R ΣΦᵀY over (Φ [n, H], Y [n, C]) batches."""
        auto: torch.Tensor | None = None
        cross: torch.Tensor | None = None
        for phi, y in batches:
            phi, y = phi.to(self.dtype), y.to(self.dtype)
            auto = phi.T @ phi if auto is None else auto + phi.T @ phi
            cross = phi.T @ y if cross is None else cross + phi.T @ y
        if auto is None or cross is None:
            raise UserError("rail: the first task's training set is empty; nothing to regress on")
        eye = torch.eye(auto.shape[0], dtype=torch.float64, device=auto.device)
        self.R = torch.linalg.inv(auto.double() + self.regularization * eye).to(self.dtype)
        self.W = self.R @ cross

    def update(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], increment: int) -> None:
        """Append `increment` zero columns to W, then the recursive update per batch."""
        if self.R is None or self.W is None:
            raise RuntimeError("RecursiveRidge.update before first()")
        R = self.R
        W = torch.cat([self.W, self.W.new_zeros(self.W.shape[0], increment)], dim=1)
        for phi, y in batches:
            phi, y = phi.to(self.dtype), y.to(self.dtype)
            eye = torch.eye(phi.shape[0], dtype=self.dtype, device=phi.device)
            gain = torch.linalg.pinv(eye + phi @ R @ phi.T)
            R = R - R @ phi.T @ gain @ phi @ R
            W = W + R @ phi.T @ (y - phi @ W)
        self.R, self.W = R, W


class InferenceModel(nn.Module):
    """The CLIP plus the tensors a RAIL learner keeps for inference, registered as frozen
    parameters so the run counts them as extra inference parameters. Encodes as the CLIP."""

    def __init__(self, clip: nn.Module, kept: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.clip = clip
        self.kept = nn.ParameterDict(
            {k: nn.Parameter(v.detach(), requires_grad=False) for k, v in kept.items()}
        )

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return as_clip(self.clip).encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return as_clip(self.clip).encode_text(tokens)

    @property
    def logit_scale(self) -> torch.Tensor:
        return as_clip(self.clip).logit_scale


class RAILBase(Learner):
    """What both RAIL forms share: no training steps, the label columns of the learned
    domains, feature extraction, and the zero-shot routing + fusion at evaluation."""

    role = "continual"
    uses_training_budget = False  # closed form: no steps, --iterations/--batch-size unused
    custom_eval_logits = True

    @dataclass
    class Config:
        fusion_weight: float = 0.8  # configs/analytic_clip.yaml: fusion_weight (β)
        batch_size: int = 128  # configs/analytic_clip.yaml: images per feature batch
        zero_shot_scale: float | None = None  # None: the model's own logit scale (CLIP: 100)
        dtype: Dtype = "float32"  # the reference's; float64 for exact algebra

        def __post_init__(self) -> None:
            if not 0.0 <= self.fusion_weight <= 1.0:
                raise UserError(f"--set fusion_weight={self.fusion_weight}: must lie in [0, 1]")
            if self.batch_size < 1:
                raise UserError(f"--set batch_size={self.batch_size}: must be >= 1")
            if self.zero_shot_scale is not None and not self.zero_shot_scale > 0:
                raise UserError(f"--set zero_shot_scale={self.zero_shot_scale}: must be > 0")

    def __init__(self, backbone: Any, cfg: Any, ctx: Any) -> None:
        super().__init__(backbone, cfg, ctx)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        # learned domain -> (first column, number of classes), in learning order
        self.columns: dict[str, tuple[int, int]] = {}

    @property
    def num_seen(self) -> int:
        return sum(size for _, size in self.columns.values())

    # -- training: nothing trains; the closed form runs at the task's end -------------
    def trainable(self, task: Task) -> list[nn.Parameter]:
        return []

    def end_task(self, task: Task) -> None:
        if task.training_set is None:
            raise UserError(f"{self.name} needs the task's whole training set (task.training_set)")
        if task.name in self.columns:
            raise UserError(
                f"{self.name}: dataset {task.name!r} appears twice in the stream; "
                "RAIL gives every domain its own label columns"
            )
        self.columns[task.name] = (self.num_seen, task.num_classes)
        self.fit(task, task.training_set)
        cost = self.cost()
        self.ctx.note("rail", cost)
        self.ctx.note_stored_data(
            cost["stored_features"],
            cost["stored_features_mb"],
            "image features (the dual's kernel memory)",
        )
        self.ctx.record("rail", [{"task": task.name, **cost}])

    def fit(self, task: Task, training_set: TrainingSet) -> None:
        raise NotImplementedError

    def cost(self) -> dict[str, Any]:
        raise NotImplementedError

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised fp32 image features of the frozen CLIP ([B, D])."""
        return F.normalize(as_clip(self.model).encode_image(images).float(), dim=-1)

    def training_batches(
        self, training_set: TrainingSet, first_column: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features [n, D] fp32, one-hot targets [n, classes seen]) of the split, in order."""
        was_training = self.model.training
        self.model.eval()
        try:
            for images, labels in training_set.batches(self.cfg.batch_size):
                targets = F.one_hot(labels + first_column, self.num_seen)
                yield self.image_features(images), targets.float()
        finally:
            self.model.train(was_training)

    # -- evaluation: zero-shot routing and fusion -----------------------------------------
    def regression(self, features: torch.Tensor) -> torch.Tensor:
        """[B, classes seen] regression outputs for normalised image features."""
        raise NotImplementedError

    def blocks(self, space: LabelSpace) -> list[tuple[int, int, int]]:
        """(first class in the space, classes, first column of the regression) of every learned
        domain in `space`: the union's learned blocks (X-TAIL), or the whole space when the
        evaluated dataset itself was learned (own label space: MTIL, hold-out sets)."""
        if not space.domains:
            if space.dataset not in self.columns:
                return []
            column, size = self.columns[space.dataset]
            if size != space.num_classes:
                raise UserError(
                    f"{self.name}: {space.dataset!r} has {space.num_classes} classes in its label "
                    f"space but {size} were learned"
                )
            return [(0, size, column)]
        ends = (*space.domain_starts[1:], space.num_classes)
        found = []
        for domain, start, end in zip(space.domains, space.domain_starts, ends, strict=True):
            if domain in self.columns:
                column, size = self.columns[domain]
                if size != end - start:
                    raise UserError(
                        f"{self.name}: domain {domain!r} has {end - start} classes in the label "
                        f"space but {size} were learned"
                    )
                found.append((start, size, column))
        return found

    def eval_logits(self, images: torch.Tensor, space: LabelSpace) -> torch.Tensor:
        features = self.image_features(images)  # under the engine's autocast, as zeroshot's
        with torch.autocast(images.device.type, enabled=False):
            scores = features @ space.text_features.float().T  # zeroshot's scores, exactly
            blocks = self.blocks(space)
            if not blocks:
                return scores
            predicted = scores.argmax(dim=1)
            routed = torch.zeros_like(predicted, dtype=torch.bool)
            for start, size, _ in blocks:
                routed |= (predicted >= start) & (predicted < start + size)
            if not bool(routed.any()):
                return scores
            scale = self.cfg.zero_shot_scale
            if scale is None:
                scale = float(as_clip(self.model).logit_scale.exp())
            probs = F.softmax(scale * scores[routed], dim=-1)
            outputs = self.regression(features[routed]).float()
            padded = torch.zeros_like(probs)
            for start, size, column in blocks:
                padded[:, start : start + size] = outputs[:, column : column + size]
            beta = self.cfg.fusion_weight
            fused = scores.clone()
            fused[routed] = (1.0 - beta) * probs + beta * padded
            return fused

    # -- persistence: the CLIP never changes, so only the regression is state ---------
    def state_dict(self) -> dict[str, Any]:
        return {"columns": [[name, c, n] for name, (c, n) in self.columns.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.columns = {str(name): (int(c), int(n)) for name, c, n in state["columns"]}


@register_learner("rail_primal")
class RAILPrimal(RAILBase):
    """RAIL's primal form: R and W in the projected feature space, updated task by task."""

    description = (
        "RAIL-Primal: recursive ridge regression on randomly projected frozen CLIP features, "
        "fused with zero-shot for images routed to learned domains"
    )

    @dataclass
    class Config(RAILBase.Config):
        regularization: float = 0.1  # configs/analytic_clip.yaml: regularization (γ)
        feature_expansion: bool = True  # configs/analytic_clip.yaml: feature_expansion
        hidden_dim: int | None = None  # None: 15000 · D / 512 (the reference's 15000 at D = 512)

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.regularization > 0:
                raise UserError(f"--set regularization={self.regularization}: must be > 0")
            if self.hidden_dim is not None and self.hidden_dim < 1:
                raise UserError(f"--set hidden_dim={self.hidden_dim}: must be >= 1 (or none)")

    def __init__(self, backbone: Any, cfg: Any, ctx: Any) -> None:
        super().__init__(backbone, cfg, ctx)
        feature_dim = self.feature_dim()
        self.hidden_dim = cfg.hidden_dim or derived_hidden_dim(feature_dim)
        self.projection: torch.Tensor | None = None
        if cfg.feature_expansion:
            self.projection = random_projection(feature_dim, self.hidden_dim, ctx.seed).to(
                ctx.device
            )
        self.ridge = RecursiveRidge(cfg.regularization, self.dtype)
        ctx.note("rail", self.cost())

    def feature_dim(self) -> int:
        """D of the image features (the CLIP's joint embedding width)."""
        visual: Any = self.model.visual  # open_clip's VisionTransformer
        return int(visual.output_dim)

    def expand(self, features: torch.Tensor) -> torch.Tensor:
        """φ(f) = ReLU(P f), or f itself without feature expansion."""
        if self.projection is None:
            return features
        return torch.relu(features @ self.projection.T.to(features.dtype))

    def fit(self, task: Task, training_set: TrainingSet) -> None:
        column, size = self.columns[task.name]
        batches = (
            (self.expand(f.to(self.dtype)), y)
            for f, y in self.training_batches(training_set, column)
        )
        if self.ridge.R is None:
            self.ridge.first(batches)
        else:
            self.ridge.update(batches, size)

    def regression(self, features: torch.Tensor) -> torch.Tensor:
        if self.ridge.W is None:
            raise RuntimeError("rail_primal: regression before the first task")
        return self.expand(features.to(self.dtype)) @ self.ridge.W

    def cost(self) -> dict[str, Any]:
        width = self.hidden_dim if self.projection is not None else self.feature_dim()
        bytes_per = 8 if self.dtype == torch.float64 else 4
        projection = 0 if self.projection is None else self.projection.numel()
        return {
            "form": "primal",
            "hidden_dim": width,
            "feature_expansion": self.projection is not None,
            "classes_seen": self.num_seen,
            "inference_parameters": projection + width * self.num_seen,
            "solver_state_mb": round(width * width * bytes_per / 2**20, 3),  # R, for training
            "stored_features": 0,
            "stored_features_mb": 0.0,
        }

    def eval_model(self) -> nn.Module:
        kept: dict[str, torch.Tensor] = {}
        if self.projection is not None:
            kept["projection"] = self.projection
        if self.ridge.W is not None:
            kept["W"] = self.ridge.W
        return InferenceModel(self.model, kept) if kept else self.model

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["projection"] = self.projection
        state["R"] = self.ridge.R
        state["W"] = self.ridge.W
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        device = self.ctx.device
        self.projection = None if state["projection"] is None else state["projection"].to(device)
        self.ridge.R = None if state["R"] is None else state["R"].to(device)
        self.ridge.W = None if state["W"] is None else state["W"].to(device)
