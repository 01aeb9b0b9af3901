"""ZSCL — Zero-Shot Continual Learning (Zheng et al., ICCV 2023): keep the zero-shot skill.

Loss = the task loss (`finetune`'s: image→text CE over the task's prompts, smoothing 0.2)
     + distillation from the frozen **zero-shot** model on reference data: a batch of
       reference images against a fixed set of reference captions, image→text logits
       [B_ref, N_cap] and their transpose (text→image), soft cross-entropy, T = 2, scaled by T²
     + l2_weight · Σ ‖θ − θ_task-start‖².
Weight ensemble: a running average of the weights, seeded with the task-start weights and
updated every `ensemble_period_fraction` of the task's steps (100 of the paper's 1000); at
the task's end the model becomes that average (PROTOCOL.md §4).

Reference code: Thunderbeee/ZSCL, ``mtil/scripts/ZSCL.sh`` (``--method ZSCL --image_loss
--text_loss --we --avg_freq 100 --l2 1 --ref-dataset ImageNet --ref-sentences
conceptual_captions``) and ``mtil/src/models/finetune.py`` + ``helpers.py``. Taken from it:
- reference batch: a fresh batch of reference images every step, as large as the training
  batch (``ref_dataset`` loader with ``args.batch_size``, reshuffled each epoch, restarted
  each task); the captions are a fixed list scored in full every step;
- the student's logits use the zero-shot model's caption embeddings (``ref_embeddings``):
  only the image encoder is distilled. Default here; ``student_text_features=student``
  distills both encoders (the paper's formula; costs a grad text forward over all captions
  every step);
- both distillation terms weight 1.0 (``weight_adjust`` off), T = 2, L2 weight 1 (``--l2 1``)
  summed over all parameters (``l2_loss``: ``mse_loss(..., reduction="sum")``) against a copy
  taken at the task start;
- ensemble: ``we_model = deepcopy(model)`` at the task start; after the optimizer step of
  every iteration with ``iteration % avg_freq == 0`` (iteration 0 included),
  ``we_n += 1; we ← (we · we_n + θ) / (we_n + 1)``; the saved (next task's) model is
  ``we_model``. The reference loop runs iterations + 1 steps, so its last step is a merge
  step; here the final step always merges, so the average likewise ends with the final weights.
Reference data: the reference streams ImageNet's training split (``ref_dataset.train_loader``,
shuffled, test preprocessing) — 64 fresh images every step, 64 000 of its 1.28 M per task —
and encodes *every* caption of the GCC validation list (``conceptual_captions``) with the
frozen zero-shot model every step (a constant: cached here). ``reference=stream`` is that
stream: one draw of num_tasks × iterations × batch images from the world, served in order, so
no image is seen twice in the run (toy world only: the real world returns its reference
images as one device tensor, 38 GB for one task of the real budget). The default,
``reference=pool``, draws `reference_images` = 2048 images once per run and cycles through them,
reshuffled per pass (seeded by seed and task); docs/learners.md gives the toy world's
pool-against-stream comparison. Captions: `reference_captions` = 2048 drawn from the
world, not the whole caption list.
Deviations: the pool (above); the distillation is KL · T² (the reference's soft
cross-entropy minus a constant: same gradient, 0 when student equals teacher).

Memory: three model copies beside the live one — the zero-shot teacher (whole run), the L2
anchor and the running average (during each task): ViT-B/16 ~3 × 0.6 GB fp32, toy CLIP
~3 × 31 MB; plus the reference pool on the device (normalized float: 2048 images are
~1.2 GB at 224 px, ~25 MB at 32 px) and the zero-shot caption embeddings.
The zero-shot teacher is the backbone as the engine hands it to `__init__` (freshly loaded
from its source, also on resume); `state_dict` stores a fingerprint of it, and
`load_state_dict` refuses a checkpoint made against different zero-shot weights, rather
than storing a second full model in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from cl_bench.api.learner import Batch, StepInfo, Task
from cl_bench.api.registry import register_learner
from cl_bench.api.toolkit import (
    clip_distillation,
    clip_logits,
    copy_weights_,
    frozen_copy,
    running_average_,
    squared_distance,
    weights_fingerprint,
)
from cl_bench.errors import UserError
from cl_bench.models.backbone import as_clip

from .finetune import Finetune, baseline_task_loss

TEXT_CHUNK = 256  # captions encoded per forward when caching the teacher's embeddings


def ensemble_period_steps(total_steps: int, fraction: float) -> int:
    """The paper's every-100-of-1000-steps ensemble period, in this task's steps (>= 1)."""
    return max(1, round(fraction * total_steps))


def is_merge_step(step: int, total_steps: int, period: int) -> bool:
    """Merge after step 0, every `period` steps, and after the final step."""
    return step % period == 0 or step == total_steps - 1


@register_learner("zscl")
class ZSCL(Finetune):
    requires = frozenset({"reference_data"})
    description = "ZSCL: distillation from the zero-shot model on reference data + L2 to task start + weight ensemble"

    @dataclass
    class Config(Finetune.Config):
        temperature: float = 2.0
        image_to_text_weight: float = 1.0  # reference: --image_loss, weight 1.0
        text_to_image_weight: float = 1.0  # reference: --text_loss, weight 1.0
        l2_weight: float = 1.0  # reference: --l2 1 (sum of squared differences)
        ensemble_period_fraction: float = 0.1  # reference: --avg_freq 100 of 1000 iterations
        # "pool": `reference_images` images drawn once, cycled; "stream": fresh images every
        # step of the run, as the reference's ImageNet stream (toy world only)
        reference: Literal["pool", "stream"] = "pool"
        reference_images: int = 2048  # the pool's size (harness choice)
        reference_captions: int = 2048  # fixed caption set (reference: all GCC val captions)
        reference_batch_size: int | None = None  # None = the training batch size (reference)
        # whose text features the student's logits use: "teacher" = reference code
        student_text_features: Literal["teacher", "student"] = "teacher"

        def __post_init__(self) -> None:
            if not 0.0 < self.ensemble_period_fraction <= 1.0:
                raise UserError(
                    f"zscl: ensemble_period_fraction must lie in (0, 1], got {self.ensemble_period_fraction}"
                )
            for key in ("reference_images", "reference_captions"):
                if getattr(self, key) < 1:
                    raise UserError(f"zscl: {key} must be >= 1, got {getattr(self, key)}")

    def __init__(self, backbone, cfg, ctx) -> None:
        super().__init__(backbone, cfg, ctx)
        self.zeroshot = frozen_copy(self.model)
        self.zeroshot_fingerprint = weights_fingerprint(self.zeroshot)
        self.reference_pool: torch.Tensor | None = None
        self.reference_order: torch.Tensor  # pool: set by begin_task, reshuffled as it cycles
        self.reference_generator: torch.Generator
        self.reference_cursor: int

    # -- reference data ---------------------------------------------------------------

    def _load_reference(self, task: Task, batch_size: int) -> torch.Tensor:
        """Draw the reference images once per run; cache the zero-shot caption embeddings."""
        if self.cfg.reference == "stream":
            if self.ctx.world == "real":
                raise UserError(
                    "zscl: reference=stream needs a reference source that serves fresh images "
                    "every step; the real world returns its reference images as one device "
                    "tensor (the stream would be num_tasks x iterations x batch images); "
                    "use --set reference=pool"
                )
            num_images = self.ctx.num_tasks * task.iterations * batch_size
        else:
            num_images = self.cfg.reference_images
        try:
            images, captions = self.ctx.reference_data(num_images, self.cfg.reference_captions)
        except UserError as exc:
            raise UserError(f"zscl needs reference images and captions: {exc}") from None
        if len(images) == 0 or len(captions) == 0:
            raise UserError(
                f"zscl: the {self.ctx.world} world returned {len(images)} reference images and {len(captions)} captions; "
                "configure its reference data (real world: --reference-images / --reference-captions)"
            )
        self.reference_pool = images
        self.reference_tokens = self.ctx.tokenize(list(captions))
        zeroshot = as_clip(self.zeroshot)
        with torch.no_grad():
            chunks = [zeroshot.encode_text(t) for t in self.reference_tokens.split(TEXT_CHUNK)]
            self.zeroshot_caption_features = F.normalize(torch.cat(chunks), dim=-1)
        self.ctx.note("zscl.reference_images", int(len(images)))
        self.ctx.note("zscl.reference_captions", int(len(captions)))
        return images

    def _next_reference_batch(self) -> torch.Tensor:
        """pool: cycle through it in a reshuffled order (a DataLoader with shuffle=True);
        stream: the next unseen images (task t reads its own slice of the run's stream)."""
        pool = self.reference_pool
        if pool is None:
            raise RuntimeError("zscl: no reference pool outside a task (begin_task draws it)")
        if self.cfg.reference == "stream":
            start = self.reference_cursor
            self.reference_cursor += self.reference_batch_size
            return pool[start : self.reference_cursor]
        if self.reference_cursor + self.reference_batch_size > len(self.reference_order):
            self.reference_order = torch.randperm(len(pool), generator=self.reference_generator)
            self.reference_cursor = 0
        idx = self.reference_order[
            self.reference_cursor : self.reference_cursor + self.reference_batch_size
        ]
        self.reference_cursor += self.reference_batch_size
        return pool[idx.to(pool.device)]

    # -- hooks ------------------------------------------------------------------------

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        batch_size = self.cfg.reference_batch_size or task.batch_size
        pool = self.reference_pool
        if pool is None:
            pool = self._load_reference(task, batch_size)
        if self.cfg.reference == "stream":
            self.reference_batch_size = batch_size
            self.reference_cursor = task.index * task.iterations * batch_size
            if self.reference_cursor + task.iterations * batch_size > len(pool):
                raise RuntimeError("zscl: the reference stream is shorter than the run")
        else:
            self.reference_batch_size = min(batch_size, len(pool))
            # the order restarts each task, as the reference code's ref loader does; seeded
            # by (seed, task) so that a resumed run draws the same batches
            state = np.random.SeedSequence([self.ctx.seed, task.index, 41]).generate_state(1)
            self.reference_generator = torch.Generator().manual_seed(int(state[0]))
            self.reference_order = torch.randperm(len(pool), generator=self.reference_generator)
            self.reference_cursor = 0
        self.anchor = frozen_copy(self.model) if self.cfg.l2_weight > 0 else None
        self.ensemble = frozen_copy(self.model)
        self.ensemble_count = 0
        self.period = ensemble_period_steps(task.iterations, self.cfg.ensemble_period_fraction)
        self.ctx.note("zscl.ensemble_period_steps", self.period)
        self.ctx.note("zscl.reference_batch_size", self.reference_batch_size)

    def zeroshot_distillation(
        self, reference_images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image→text, text→image) distillation toward the zero-shot model on reference data."""
        teacher_text = self.zeroshot_caption_features
        zeroshot, student = as_clip(self.zeroshot), as_clip(self.model)
        with torch.no_grad():
            teacher_image = F.normalize(zeroshot.encode_image(reference_images), dim=-1)
            teacher_logits = zeroshot.logit_scale.exp() * teacher_image @ teacher_text.T
        student_image = F.normalize(student.encode_image(reference_images), dim=-1)
        if self.cfg.student_text_features == "student":
            student_text = F.normalize(student.encode_text(self.reference_tokens), dim=-1)
        else:
            student_text = teacher_text
        student_logits = student.logit_scale.exp() * student_image @ student_text.T
        return clip_distillation(teacher_logits, student_logits, self.cfg.temperature)

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = clip_logits(self.model, batch.images, batch.text_tokens)
        task_loss = baseline_task_loss(
            logits, batch.labels, self.cfg.task_loss, self.cfg.label_smoothing
        )
        image_to_text, text_to_image = self.zeroshot_distillation(self._next_reference_batch())
        loss = (
            task_loss
            + self.cfg.image_to_text_weight * image_to_text
            + self.cfg.text_to_image_weight * text_to_image
        )
        scalars = {
            "task_loss": task_loss.detach(),
            "distill_i2t": image_to_text.detach(),
            "distill_t2i": text_to_image.detach(),
        }
        if self.anchor is not None:
            l2 = squared_distance(self.model, self.anchor)
            loss = loss + self.cfg.l2_weight * l2
            scalars["l2"] = l2.detach()
        return loss, scalars

    def after_step(self, step: StepInfo) -> None:
        """The weight ensemble folds in the weights just stepped to (ZSCL's ``merge_we``)."""
        if is_merge_step(step.step, step.total_steps, self.period):
            self.ensemble_count += 1
            running_average_(self.ensemble, self.model, self.ensemble_count)

    def end_task(self, task: Task) -> None:
        copy_weights_(self.model, self.ensemble)  # the next task starts from the average
        del self.ensemble, self.anchor  # free the copies between tasks
        super().end_task(task)

    # -- persistence ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "zeroshot_fingerprint": self.zeroshot_fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("zeroshot_fingerprint") != self.zeroshot_fingerprint:
            raise UserError(
                "zscl: the checkpoint was trained against different zero-shot weights "
                f"({state.get('zeroshot_fingerprint')} vs {self.zeroshot_fingerprint} of this backbone); "
                "resume with the original backbone, or start a fresh run"
            )
        self.model.load_state_dict(state["model"])
