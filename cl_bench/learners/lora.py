"""Plain LoRA, merged into the backbone after every task — CoDyRA's ablation without
importance weights, and the base class of `drslora` and `gated_lora`.

Paper: CoDyRA, "Continual Dynamic Rank-selective Adaptation for vision-language models"
(Lu et al., 2024), ablation "LoRA" (fixed rank, no importance weights).
Reference code: github.com/Artificer-AI-Lab/CoDyRA (``models/codyra.py``, ``loralib/codyra.py``).

What it does, per task: attach fresh rank-r adapters ΔW = B A (A Kaiming-uniform, B = 0,
no α/r scaling) to attention q, k, v, out and MLP fc, proj of both encoders (configurable);
train them alone with the contrastive loss of `cl_bench.api.toolkit` (image→text over the task's
prompts + text→image, weighted as CoDyRA's code weights it: see below) with AdamW (lr 5e-4, betas 0.9/0.9999, wd 0, cosine; the reference
code's defaults); at the end of the task write ΔW into the base weights in fp32 and remove
the adapter. Inference cost is the plain model's.

Toy budgets (PROTOCOL.md §5): the rank scales with the model width,
r = max(2, round(r_paper · width / 768)), derived at run time and noted in the manifest.

Deviations from the reference code:
- The adapter is the reference's explicit branch W x + B (w ⊙ (A x))
  (`cl_bench.models.lora`), but the adapted attention keeps its packed q/k/v projection (one
  matmul, each branch added to its slice) where the reference makes three unfused copies.
  Same function, same parameter count; other rounding.
- none in the text→image term by default: the reference (``models/codyra.py``,
  `train_model`) scores one row per prompt of every class seen so far plus the task's
  (P rows; earlier prompts' rows have all-zero targets) against the batch's images and
  averages over the P rows; `text_to_image="prompts"` (the default) is that form
  (`contrastive_loss(..., text_rows=P)`, P = prompts of all earlier tasks + this task's,
  counted with repeats as the reference's list is). `text_to_image="batch"` is the
  PROTOCOL.md §2 form cl-bench used before: the same sum averaged over the B images, P/B
  times heavier (1.6× at X-TAIL's first task, 17× at its tenth).
- `logit_scale` stays frozen (the reference code trains only adapter parameters too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.api.optim import OptimizerConfig
from cl_bench.api.registry import register_learner
from cl_bench.api.toolkit import clip_logits, contrastive_loss
from cl_bench.errors import UserError
from cl_bench.models.lora import (
    ENCODERS,
    MATRIX_KINDS,
    LoRAAdapter,
    LowRankBlock,
    Variant,
    find_sites,
)
from cl_bench.models.redundancy import RedundancyForm, redundancy_loss

REFERENCE_WIDTH = 768  # ViT-B/16's width, at which the paper's ranks are given
# CoDyRA's budget per task (PROTOCOL.md §4; runner_codyra.sh ITERATIONS=500), in every setting
# it reports (X-TAIL, 5-shot MTIL). Budget-scaled schedules (drslora's κ total, gated_lora's
# score lr) scale against it, not against the setting's full-fine-tuning budget.
CODYRA_ITERATIONS = 500


def scaled_rank(paper_rank: int, model_width: int, reference_width: int = REFERENCE_WIDTH) -> int:
    """r = max(2, round(r_paper · d / 768)) (PROTOCOL.md §5); 16 stays 16 at width 768."""
    return max(2, round(paper_rank * model_width / reference_width))


@register_learner("lora")
class LoRA(Learner):
    description = "Plain LoRA on q,k,v,out,fc,proj of both encoders, merged after each task"
    variant: ClassVar[Variant] = "lora"

    @dataclass
    class Config(OptimizerConfig):
        lr: float = 5e-4  # reference code's defaults: betas 0.9/0.9999, wd 0, cosine, no warm-up
        beta2: float = 0.9999
        rank: int = 16  # at width 768; scaled with the model width at run time
        scale_rank_with_width: bool = True  # PROTOCOL.md §5; False uses `rank` as given
        encoders: tuple[str, ...] = ENCODERS
        kinds: tuple[str, ...] = MATRIX_KINDS
        label_smoothing: float = 0.0  # reference code: --ls 0
        # "prompts": CoDyRA's text→image mean over all seen + current prompts (reference);
        # "batch": the mean over the batch's images (PROTOCOL.md §2, cl-bench before)
        text_to_image: Literal["prompts", "batch"] = "prompts"
        # ReSoRA's subspace-redundancy regulariser, a plug-in for every LoRA learner
        # (cl_bench.models.redundancy); "none" = off. `resora` = lora with "linear".
        redundancy: RedundancyForm = "none"
        redundancy_weight: float = 1.0
        redundancy_kernel_gamma: float = 1.0

    def __init__(self, backbone, cfg, ctx) -> None:
        super().__init__(backbone, cfg, ctx)
        self.adapter: LoRAAdapter | None = None
        self.rank = (
            scaled_rank(cfg.rank, ctx.model_width) if cfg.scale_rank_with_width else cfg.rank
        )
        if self.rank < 1:
            raise UserError(f"--set rank={cfg.rank} gives LoRA rank {self.rank}; use rank >= 1")
        self.sites = find_sites(self.model, cfg.encoders, cfg.kinds)  # validates the targets
        self.trainable_per_task: list[int] = []
        self.seen_prompts = 0  # prompts of all finished tasks (CoDyRA's args.seen_classes)
        if cfg.text_to_image not in ("prompts", "batch"):
            raise UserError(
                f"--set text_to_image={cfg.text_to_image}: use prompts (CoDyRA's form) or batch"
            )
        ctx.note(f"{self.name}.rank", self.rank)
        ctx.note(f"{self.name}.adapted_matrices", len(self.sites))

    # -- hooks a subclass extends -------------------------------------------------------
    def make_adapter(self) -> LoRAAdapter:
        return LoRAAdapter(
            self.model,
            find_sites(self.model, self.cfg.encoders, self.cfg.kinds),
            self.rank,
            self.variant,
        )

    def trainable(self, task: Task) -> list[dict[str, Any]]:
        return [{"params": list(self._adapter().parameters())}]

    def extra_loss(self) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """A regulariser added to the task loss (gated_lora's score penalty)."""
        return None, {}

    def after_step(self, step: StepInfo) -> dict[str, Any] | None:
        """Runs after each optimizer step (drslora's proximal soft-threshold)."""
        return None

    def before_merge(self, task: Task) -> None:
        """Records what the adapter kept, before it is merged away."""

    def site_rows(
        self, task: Task, fields: Callable[[LowRankBlock], dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """One row per adapted matrix: where it is (task, encoder, layer, kind), then
        `fields` of its block; the per-task tables `before_merge` records (ranks, gates)."""
        return [
            {
                "task": task.name,
                "encoder": a.site.encoder,
                "layer": a.site.layer,
                "kind": a.site.kind,
                **fields(a.block),
            }
            for a in self._adapter().attached
        ]

    # -- Learner API ---------------------------------------------------------------------
    def _adapter(self) -> LoRAAdapter:
        if self.adapter is None:
            raise RuntimeError(f"{self.name}: no adapter outside a task (begin_task makes one)")
        return self.adapter

    def begin_task(self, task: Task) -> None:
        self.model.requires_grad_(False)
        self.adapter = self.make_adapter()
        count = self.adapter.parameter_count()
        self.trainable_per_task.append(count)
        self.ctx.note(f"{self.name}.trainable_parameters_per_task", list(self.trainable_per_task))

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = clip_logits(self.model, batch.images, batch.text_tokens)
        rows = self.seen_prompts + logits.shape[1] if self.cfg.text_to_image == "prompts" else None
        task_loss = contrastive_loss(logits, batch.labels, self.cfg.label_smoothing, rows)
        extra, scalars = self.extra_loss()
        total = task_loss if extra is None else task_loss + extra
        redundancy, redundancy_scalars = redundancy_loss(
            (a.block for a in self._adapter().attached),
            self.cfg.redundancy,
            self.cfg.redundancy_weight,
            self.cfg.redundancy_kernel_gamma,
        )
        if redundancy is not None:
            total = total + redundancy
            scalars.update(redundancy_scalars)
        return total, {"task_loss": task_loss.detach(), **scalars}

    def end_task(self, task: Task) -> None:
        if self.adapter is None:
            raise RuntimeError("end_task without begin_task")
        self.before_merge(task)
        self.adapter.merge()
        self.adapter = None
        self.seen_prompts += task.num_classes

    def state_dict(self) -> dict[str, Any]:
        if self.adapter is not None:
            raise RuntimeError(
                f"{self.name}: state_dict mid-task is not supported; checkpoints are taken after end_task merged the adapter"
            )
        return {
            "model": self.model.state_dict(),
            "trainable_per_task": list(self.trainable_per_task),
            "seen_prompts": self.seen_prompts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.trainable_per_task = list(state.get("trainable_per_task", []))
        self.seen_prompts = int(state["seen_prompts"])
