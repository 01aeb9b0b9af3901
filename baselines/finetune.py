"""Sequential full fine-tuning — the lower bound of every continual-learning table.

Reference: the ZSCL code's fine-tuning baseline (github.com/Thunderbeee/ZSCL, mtil/):
AdamW, label smoothing 0.2, 100 of 1000 steps linear warm-up then cosine, batch 64, lr 1e-5
for ViT-B/16. The lr comes from the setting (`ctx.full_finetune_lr`, `lr=None`), so every
full-fine-tuning baseline shares one value per world (the toy world's is calibrated on this
learner; PROTOCOL.md §5). The engine builds a fresh optimizer per task, as the reference does.
Weight decay 0.0: the reference's `mtil/src/args.py` default (`--wd 0.0`), which its
scripts never override; betas (0.9, 0.999) as its `--beta2` default.
Deviations: `logit_scale` stays frozen (the protocol scores with the model's own scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.api.optim import OptimizerConfig
from cl_bench.api.registry import register_learner
from cl_bench.api.toolkit import clip_logits, contrastive_loss


@register_learner("finetune")
class Finetune(Learner):
    description = "Sequential full fine-tuning of both encoders (lower bound)"

    @dataclass
    class Config(OptimizerConfig):
        # lr None = the setting's full-fine-tuning lr for this world
        weight_decay: float = 0.0  # ZSCL reference code (mtil/src/args.py --wd)
        warmup_fraction: float = 0.1  # 100 of the reference 1000 steps
        label_smoothing: float = 0.2

    def begin_task(self, task: Task) -> None:
        self.ctx.note("lr", self.optimizer_config(task).lr)

    def trainable(self, task: Task) -> list[torch.nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if n != "logit_scale"]

    def task_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = clip_logits(self.model, batch.images, batch.text_tokens)
        return contrastive_loss(logits, batch.labels, self.cfg.label_smoothing), logits

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, _ = self.task_loss(batch)
        return loss, {}
