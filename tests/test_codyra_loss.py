"""CoDyRA's text→image weighting (models/codyra.py `train_model`), by hand and in the learner."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from learner_steps import steps
from test_lora_adapter import tiny_model
from test_lora_learners import make_ctx, make_task

from cl_bench.api.toolkit import contrastive_loss
from cl_bench.learners.drslora import DRSLoRA
from cl_bench.learners.lora import LoRA
from cl_bench.models.backbone import Backbone

LOGITS = torch.tensor([[2.0, 0.0], [1.0, 3.0], [0.5, -1.0]])  # 3 images x 2 prompts
LABELS = torch.tensor([0, 1, 0])


def _nll(x: float, others: list[float]) -> float:
    return -math.log(math.exp(x) / sum(math.exp(v) for v in [x, *others]))


# image→text: each image against the 2 prompts
I2T = (_nll(2.0, [0.0]) + _nll(3.0, [1.0]) + _nll(0.5, [-1.0])) / 3
# text→image: prompt 0 (column [2, 1, 0.5]) targets images 0 and 2, prompt 1 ([0, 3, -1]) image 1
T2I_SUM = _nll(2.0, [1.0, 0.5]) + _nll(0.5, [2.0, 1.0]) + _nll(3.0, [0.0, -1.0])


def test_batch_form_is_the_sum_over_the_batch_size() -> None:
    assert contrastive_loss(LOGITS, LABELS).item() == pytest.approx(I2T + T2I_SUM / 3, rel=1e-6)


def test_prompt_form_is_the_sum_over_all_seen_and_current_prompts() -> None:
    got = contrastive_loss(LOGITS, LABELS, text_rows=7)  # 5 earlier prompts + the task's 2
    assert got.item() == pytest.approx(I2T + T2I_SUM / 7, rel=1e-6)


def test_prompt_form_equals_the_reference_expression() -> None:
    """F.cross_entropy(t_logits [P, B], 0/1 mask [P, B]) with the earlier prompts' rows first
    (any logits: their targets are zero) — the reference's own expression."""
    gen = torch.Generator().manual_seed(0)
    seen = torch.randn(5, 3, generator=gen)
    t_logits = torch.cat([seen, LOGITS.T])  # [7, 3]
    mask = torch.zeros(7, 3)
    mask[5 + LABELS, torch.arange(3)] = 1.0
    reference = F.cross_entropy(LOGITS, LABELS) + F.cross_entropy(t_logits, mask)
    got = contrastive_loss(LOGITS, LABELS, text_rows=7)
    torch.testing.assert_close(got, reference)
    with pytest.raises(ValueError, match="fewer than"):
        contrastive_loss(LOGITS, LABELS, text_rows=1)


@pytest.mark.parametrize("cls", [LoRA, DRSLoRA])
def test_learner_counts_seen_prompts_and_keeps_them_in_its_state(cls: type[LoRA]) -> None:
    backbone = Backbone(tiny_model(), lambda t: t, 32, (0.5,) * 3, (0.5,) * 3, "tiny", "random")
    learner = cls(backbone, cls.Config(), make_ctx(backbone.width))
    assert learner.cfg.text_to_image == "prompts" and learner.seen_prompts == 0
    task = make_task(4)
    steps(learner).begin(task)
    steps(learner).end(task)
    assert learner.seen_prompts == task.num_classes
    other = Backbone(tiny_model(), lambda t: t, 32, (0.5,) * 3, (0.5,) * 3, "tiny", "random")
    restored = cls(other, cls.Config(), make_ctx(other.width))
    restored.load_state_dict(learner.state_dict())
    assert restored.seen_prompts == task.num_classes
