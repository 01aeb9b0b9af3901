"""LwF — Learning without Forgetting (Li & Hoiem, TPAMI 2017), as run for CLIP by ZSCL.

Loss = the task loss (`finetune`'s: image→text CE, label smoothing 0.2)
     + distillation from the model as it was at the start of the task (a frozen copy) on a
       second batch of the current task's training images, scored against the current
       task's prompts: image→text logits [B, C] and their transpose (text→image), each a soft
       cross-entropy with temperature T = 2 scaled by T² (PROTOCOL.md §4).

Reference code: Thunderbeee/ZSCL, ``mtil/scripts/lwf.sh`` runs ``--method ZSCL
--image_loss --text_loss --ref-dataset <current dataset> --ref-model <previous task's
checkpoint>`` (task 1: no ``--ref-model``, i.e. the zero-shot model = the task-start model);
in ``mtil/src/models/finetune.py``:
- the distillation batch comes from ``ref_dataset.train_loader``, a second loader over the
  *current* dataset's training split with its own shuffle and the *test* preprocessing,
  ``args.batch_size`` images per step — not the training batch. Default here
  (``distill_batch=separate``): a seeded, per-task reshuffled pass over `task.training_set`,
  the training batch's size. cl-bench has no training augmentation, so the two batches differ
  only in which images they hold; ``distill_batch=training`` distils on the training batch
  (one image forward fewer, what cl-bench did before);
- the teacher's texts are ``ref_dataset``'s template over its class names: the task's prompts;
- both distillation terms have weight 1.0 (``weight_adjust`` off), T = 2 (``args.T``), and the
  student's logits use the *teacher's* text embeddings (``ref_embeddings``) and the frozen
  ``logit_scale``, so only the image encoder is distilled. ``student_text_features=student``
  distills both encoders (the papers' formula) instead.
``lwf.sh`` also passes ``--fair``, which ``mtil/src/args.py`` parses and nothing reads: no effect.

Deviation from the reference code: the loss is KL · T², i.e. the reference's soft
cross-entropy minus the teacher's entropy, a constant: same gradient, but 0 when the student
equals the teacher.

Under torchrun every rank draws the same separate batch (the generator is seeded by run seed
and task), so the distillation term and its gradient are those of one process; in
``distill_batch=training`` mode the rows are gathered for the text→image softmax.

Memory: one frozen copy of the model (the teacher) during each task, freed at the task's
end: ViT-B/16 ~150 M parameters, ~0.6 GB fp32; the toy CLIP ~31 MB. Compute: one image
forward of student (with gradients) and teacher per step on the second batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from cl_bench.api.collectives import gather_batch
from cl_bench.api.learner import Batch, StepInfo, Task, TrainingSet
from cl_bench.api.registry import register_learner
from cl_bench.api.sampling import to_device
from cl_bench.api.toolkit import clip_distillation, clip_features, frozen_copy
from cl_bench.errors import UserError
from cl_bench.models.backbone import as_clip

from .finetune import Finetune, baseline_task_loss


class SecondLoader:
    """Batches of a training split in a reshuffled order, apart from the engine's batches (a
    ``DataLoader(shuffle=True)`` restarted each task): seeded by (seed, task), so resumable."""

    def __init__(self, training_set: TrainingSet, batch_size: int, seed: int, task: int) -> None:
        self.training_set = training_set
        self.batch_size = min(batch_size, len(training_set))
        state = np.random.SeedSequence([seed, task, 31]).generate_state(1)
        self.generator = torch.Generator().manual_seed(int(state[0]))
        self.order = torch.randperm(len(training_set), generator=self.generator)
        self.cursor = 0

    def next(self) -> torch.Tensor:
        """The next batch's normalized images on the device (a partial last batch is skipped)."""
        if self.cursor + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.training_set), generator=self.generator)
            self.cursor = 0
        idx = np.sort(self.order[self.cursor : self.cursor + self.batch_size].numpy())
        self.cursor += self.batch_size
        chunk = to_device(self.training_set.images[idx], self.training_set.device)
        return self.training_set.normalize(chunk)


@register_learner("lwf")
class LwF(Finetune):
    description = "Learning without Forgetting: task loss + distillation (T=2) from the task-start model on current images"

    @dataclass
    class Config(Finetune.Config):
        temperature: float = 2.0
        image_to_text_weight: float = 1.0  # reference code: --image_loss, weight 1.0
        text_to_image_weight: float = 1.0  # reference code: --text_loss, weight 1.0
        # whose text features the student's logits use: "teacher" = reference code
        student_text_features: Literal["teacher", "student"] = "teacher"
        # which images are distilled: "separate" = a second batch of the task (reference code)
        distill_batch: Literal["separate", "training"] = "separate"

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.teacher = frozen_copy(self.model)
        with torch.no_grad():
            self.teacher_text = F.normalize(
                as_clip(self.teacher).encode_text(task.text_tokens), dim=-1
            )
        self.second: SecondLoader | None = None
        if self.cfg.distill_batch == "separate":
            if task.training_set is None:
                raise UserError(
                    "lwf: distill_batch=separate needs the task's training set; set --set distill_batch=training"
                )
            self.second = SecondLoader(
                task.training_set, task.batch_size, self.ctx.seed, task.index
            )

    def distillation(
        self,
        images: torch.Tensor,
        student_text: torch.Tensor,
        student_image: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image→text, text→image) distillation on `images` over the task's prompts.

        `student_image` given: the student's features of `images` from the task forward (the
        training batch, a shard of it under torchrun: its rows are gathered for text→image).
        """
        teacher = as_clip(self.teacher)
        with torch.no_grad():
            teacher_image = F.normalize(teacher.encode_image(images), dim=-1)
            teacher_logits = teacher.logit_scale.exp() * teacher_image @ self.teacher_text.T
        student = as_clip(self.model)
        sharded = student_image is not None
        if student_image is None:
            student_image = F.normalize(student.encode_image(images), dim=-1)
        student_logits = student.logit_scale.exp() * student_image @ student_text.T
        if sharded:  # text->image is a softmax over the batch's images: every rank's rows
            teacher_logits, student_logits = gather_batch(teacher_logits, student_logits)
        return clip_distillation(teacher_logits, student_logits, self.cfg.temperature)

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        image_features, text_features = clip_features(self.model, batch.images, batch.text_tokens)
        logits = as_clip(self.model).logit_scale.exp() * image_features @ text_features.T
        task_loss = baseline_task_loss(
            logits, batch.labels, self.cfg.task_loss, self.cfg.label_smoothing
        )
        student_text = (
            text_features if self.cfg.student_text_features == "student" else self.teacher_text
        )
        if self.second is not None:
            image_to_text, text_to_image = self.distillation(self.second.next(), student_text)
        else:
            image_to_text, text_to_image = self.distillation(
                batch.images, student_text, image_features
            )
        loss = (
            task_loss
            + self.cfg.image_to_text_weight * image_to_text
            + self.cfg.text_to_image_weight * text_to_image
        )
        return loss, {
            "task_loss": task_loss.detach(),
            "distill_i2t": image_to_text.detach(),
            "distill_t2i": text_to_image.detach(),
        }

    def end_task(self, task: Task) -> None:
        del self.teacher, self.teacher_text, self.second  # free the copies between tasks
        super().end_task(task)
