"""Zero-shot CLIP: never trains. Its rows are identical after every task, so its Transfer,
Average and Last equal the zero-shot accuracies — the harness's free self-check."""

from __future__ import annotations

from cl_bench.api.learner import Learner
from cl_bench.api.registry import register_learner


@register_learner("zeroshot")
class ZeroShot(Learner):
    """Declares nothing trainable, so the engine runs no steps for it."""

    description = "The pre-trained CLIP, never updated (upper bound on transfer, lower on learning)"
    role = "reference"
    uses_training_budget = False
