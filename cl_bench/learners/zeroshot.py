"""Zero-shot CLIP: never trains. Its rows are identical after every task, so its Transfer,
Average and Last equal the zero-shot accuracies — the harness's free self-check."""

from __future__ import annotations

from cl_bench.api.learner import Batch, Learner, StepInfo
from cl_bench.api.registry import register_learner


@register_learner("zeroshot")
class ZeroShot(Learner):
    description = "The pre-trained CLIP, never updated (upper bound on transfer, lower on learning)"
    trains = False

    def train_step(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        raise RuntimeError("zeroshot does not train; the engine skips its training loop")

    def trainable_parameter_count(self) -> int:
        return 0
