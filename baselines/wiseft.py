"""WiSE-FT — robust fine-tuning by weight-space ensembling (Wortsman et al., CVPR 2022),
applied per task as in the ZSCL benchmark.

Each task is plain `finetune` (its task loss: image→text CE, smoothing 0.2); at its end θ ← α · θ_finetuned + (1 − α) · θ_previous, where
θ_previous is the model at the start of the task (the previous task's merged result, the
zero-shot model before task 1). α = 0.8 toward the new weights is the reference default.

Reference code: Thunderbeee/ZSCL, ``mtil/scripts/WiSE_finetune.sh`` (``--method finetune
--wise_merge --wise_ft_model n --wise_ft_alpha 0.8``); ``mtil/src/models/finetune.py``
merges every parameter as ``param_q * alpha + param_k * (1 - alpha)`` with ``param_k`` from
``model_fix``, the checkpoint the task started from. Here the merge covers every parameter
(``named_parameters``; the frozen ``logit_scale`` is unchanged by it); buffers are left alone.
The merge happens once, after the task's last step, and the merged model is what is evaluated
and what the next task starts from (the reference saves it as the next task's ``--load``).

Memory: one frozen copy of the model (θ_previous) during each task, freed at its end:
ViT-B/16 ~0.6 GB fp32, toy CLIP ~31 MB. Nothing persists across tasks beyond the model: the
next task's θ_previous is the merged model itself, so `state_dict` is the base class's.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.api.learner import Task
from cl_bench.api.registry import register_learner
from cl_bench.api.toolkit import frozen_copy, interpolate_
from cl_bench.errors import UserError

from .finetune import Finetune


@register_learner("wiseft")
class WiSEFT(Finetune):
    description = "WiSE-FT: fine-tune each task, then interpolate 0.8·new + 0.2·task-start weights"

    @dataclass
    class Config(Finetune.Config):
        alpha: float = 0.8  # weight of the fine-tuned model in the merge (reference default)

        def __post_init__(self) -> None:
            if not 0.0 <= self.alpha <= 1.0:
                raise UserError(
                    f"wiseft: alpha must lie in [0, 1], got {self.alpha}; set it with --set alpha=0.8"
                )

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.previous = frozen_copy(self.model)

    def end_task(self, task: Task) -> None:
        interpolate_(self.model, self.previous, self.cfg.alpha)
        del self.previous  # free the copy between tasks
        super().end_task(task)
