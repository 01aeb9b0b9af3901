"""Sequential full fine-tuning — the lower bound of every continual-learning table.

Reference: the ZSCL code's fine-tuning baseline (github.com/Thunderbeee/ZSCL, mtil/):
AdamW, label smoothing 0.2, 100 of 1000 steps linear warm-up then cosine, batch 64, lr 1e-5
for ViT-B/16. The lr comes from the setting (`ctx.full_finetune_lr`, `lr=None`), so every
full-fine-tuning baseline shares one value per world (the toy world's is calibrated on this
learner; PROTOCOL.md §5). The engine builds a fresh optimizer per task, as the reference does.
Weight decay 0.0: the reference's `mtil/src/args.py` default (`--wd 0.0`), which its
scripts never override; betas (0.9, 0.999) as its `--beta2` default. `logit_scale` stays
frozen, as the reference excludes it from the optimizer (`exclude_params_name`).

Task loss (shared by lwf, zscl and wiseft): the reference's ``mtil/src/models/finetune.py``
computes ``F.cross_entropy(logit_scale.exp() * img @ txt.T, labels, label_smoothing=args.ls)``
over the current task's prompts — image→text only. That is the default
(``task_loss=image_to_text``); ``task_loss=symmetric`` adds the text→image term of
PROTOCOL.md §2 (`cl_bench.api.toolkit.contrastive_loss`), which cl-bench used before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.api.optim import OptimizerConfig
from cl_bench.api.registry import register_learner
from cl_bench.api.toolkit import clip_logits, contrastive_loss

TaskLoss = Literal["image_to_text", "symmetric"]


def baseline_task_loss(
    logits_per_image: torch.Tensor, labels: torch.Tensor, kind: TaskLoss, label_smoothing: float
) -> torch.Tensor:
    """The baselines' task loss on [B, C] image→prompt logits.

    ``image_to_text`` (ZSCL's code): cross-entropy over the task's prompts with label
    smoothing. Under torchrun each rank's mean over its shard, averaged with the gradients,
    is the whole batch's mean, so no gather is needed. ``symmetric``: that plus text→image.
    """
    if kind == "symmetric":
        return contrastive_loss(logits_per_image, labels, label_smoothing)
    return F.cross_entropy(logits_per_image, labels, label_smoothing=label_smoothing)


@register_learner("finetune")
class Finetune(Learner):
    description = "Sequential full fine-tuning of both encoders (lower bound)"

    @dataclass
    class Config(OptimizerConfig):
        # lr None = the setting's full-fine-tuning lr for this world
        weight_decay: float = 0.0  # ZSCL reference code (mtil/src/args.py --wd)
        warmup_fraction: float = 0.1  # 100 of the reference 1000 steps
        label_smoothing: float = 0.2  # reference scripts: --ls 0.2
        # "image_to_text" = ZSCL's code; "symmetric" adds text->image (PROTOCOL.md §2)
        task_loss: TaskLoss = "image_to_text"

    def begin_task(self, task: Task) -> None:
        self.ctx.note("lr", self.optimizer_config(task).lr)

    def trainable(self, task: Task) -> list[torch.nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if n != "logit_scale"]

    def task_loss(self, batch: Batch) -> torch.Tensor:
        logits = clip_logits(self.model, batch.images, batch.text_tokens)
        return baseline_task_loss(
            logits, batch.labels, self.cfg.task_loss, self.cfg.label_smoothing
        )

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.task_loss(batch), {}
