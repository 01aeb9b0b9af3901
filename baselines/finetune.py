"""Sequential full fine-tuning — the lower bound of every continual-learning table.

Reference: the ZSCL code's fine-tuning baseline (github.com/Thunderbeee/ZSCL, mtil/):
AdamW, label smoothing 0.2, 100 of 1000 steps linear warm-up then cosine, batch 64, lr 1e-5
for ViT-B/16. The lr comes from the setting (`ctx.full_finetune_lr`), so every
full-fine-tuning baseline shares one value per world (the toy world's is calibrated on this
learner; PROTOCOL.md §5). A fresh optimizer per task, as in the reference code.
Weight decay 0.0: the reference's `mtil/src/args.py` default (`--wd 0.0`), which its
scripts never override; betas (0.9, 0.999) as its `--beta2` default.
Deviations: `logit_scale` stays frozen (the protocol scores with the model's own scale).
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.api.losses import clip_logits, contrastive_loss
from cl_bench.api.optim import adamw_warmup_cosine
from cl_bench.api.registry import register_learner


@register_learner("finetune")
class Finetune(Learner):
    description = "Sequential full fine-tuning of both encoders (lower bound)"

    @dataclass
    class Config:
        lr: float | None = None  # None = the setting's full-fine-tuning lr for this world
        weight_decay: float = 0.0  # ZSCL reference code (mtil/src/args.py --wd)
        label_smoothing: float = 0.2
        warmup_fraction: float = 0.1  # 100 of the reference 1000 steps

    def trainable_parameters(self) -> list:
        return [p for n, p in self.model.named_parameters() if n != "logit_scale"]

    def begin_task(self, task: Task) -> None:
        self.model.logit_scale.requires_grad_(False)
        lr = self.cfg.lr if self.cfg.lr is not None else self.ctx.full_finetune_lr
        self.ctx.note("lr", lr)
        self.optimizer, self.scheduler = adamw_warmup_cosine(
            self.trainable_parameters(),
            lr,
            self.cfg.weight_decay,
            task.iterations,
            self.cfg.warmup_fraction,
        )

    def task_loss(self, batch: Batch) -> tuple:
        logits = clip_logits(self.model, batch.images, batch.text_tokens)
        return contrastive_loss(logits, batch.labels, self.cfg.label_smoothing), logits

    def train_step(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        loss, _ = self.task_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.detach()}
