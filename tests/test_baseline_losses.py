"""The baselines' task loss against hand-computed numbers, LwF's second batch and ZSCL's
reference stream (issue 21 §3: the baselines as ZSCL's code trains them)."""

from __future__ import annotations

import math

import pytest
import torch
from cl_bench_baselines.finetune import Finetune, baseline_task_loss
from cl_bench_baselines.lwf import LwF
from cl_bench_baselines.wiseft import WiSEFT
from cl_bench_baselines.zscl import ZSCL
from learner_steps import steps
from test_baselines import build, make_batch, make_ctx, make_task

from cl_bench.api.hyperparameters import build_config
from cl_bench.api.learner import StepInfo
from cl_bench.api.toolkit import clip_logits
from cl_bench.errors import UserError
from cl_bench.models.tiny import random_tiny_clip

LOGITS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
LABELS = [0, 2]


def log_softmax_row(row: list[float]) -> list[float]:
    top = max(row)
    log_z = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_z for v in row]


def hand_image_to_text(logits: list[list[float]], labels: list[int], eps: float) -> float:
    """mean over rows of -Σ_c q_c log p_c, q = (1 − ε)·one-hot + ε / C (torch's smoothing)."""
    total = 0.0
    for row, y in zip(logits, labels, strict=True):
        c = len(row)
        logp = log_softmax_row(row)
        total += -sum(((1 - eps) * (j == y) + eps / c) * logp[j] for j in range(c))
    return total / len(logits)


def test_default_task_loss_is_image_to_text_ce_with_smoothing_by_hand():
    # row 0: log p = [2, 0, -1] - log(e^2 + 1 + e^-1); row 1 likewise, label 2
    z0 = math.log(math.exp(2.0) + 1.0 + math.exp(-1.0))
    z1 = math.log(math.exp(0.5) + math.exp(1.5) + 1.0)
    logp0 = [2.0 - z0, -z0, -1.0 - z0]
    logp1 = [0.5 - z1, 1.5 - z1, -z1]
    q0 = [0.8 + 0.2 / 3, 0.2 / 3, 0.2 / 3]
    q1 = [0.2 / 3, 0.2 / 3, 0.8 + 0.2 / 3]
    row0 = sum(q * lp for q, lp in zip(q0, logp0, strict=True))
    row1 = sum(q * lp for q, lp in zip(q1, logp1, strict=True))
    expected = -(row0 + row1) / 2
    assert expected == pytest.approx(hand_image_to_text(LOGITS, LABELS, 0.2), rel=1e-12)
    assert Finetune.Config().task_loss == "image_to_text"
    assert Finetune.Config().label_smoothing == 0.2
    got = baseline_task_loss(torch.tensor(LOGITS), torch.tensor(LABELS), "image_to_text", 0.2)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_task_loss_adds_text_to_image_by_hand():
    # text->image: image i's prompt (its label's column) against the batch's two images,
    # target one-hot on i (the two labels differ)
    columns = [[LOGITS[0][LABELS[i]], LOGITS[1][LABELS[i]]] for i in range(2)]
    t2i = -(log_softmax_row(columns[0])[0] + log_softmax_row(columns[1])[1]) / 2
    expected = hand_image_to_text(LOGITS, LABELS, 0.2) + t2i
    got = baseline_task_loss(torch.tensor(LOGITS), torch.tensor(LABELS), "symmetric", 0.2)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert t2i > 0.1  # the two options differ by a real amount


@pytest.mark.parametrize("cls", [Finetune, LwF, ZSCL, WiSEFT])
def test_each_baselines_task_loss_is_the_hand_formula_on_its_own_logits(cls):
    learner, backbone = build(cls)
    task = make_task(backbone)
    steps(learner).begin(task)
    batch = make_batch(task)
    with torch.no_grad():
        logits = clip_logits(learner.model, batch.images, batch.text_tokens).tolist()
    expected = hand_image_to_text(logits, batch.labels.tolist(), 0.2)
    with torch.no_grad():
        loss, scalars = learner.loss(batch, StepInfo(0, 4, 0, 2))
    got = float(scalars["task_loss"]) if "task_loss" in scalars else float(loss)
    assert got == pytest.approx(expected, rel=1e-5)


def test_task_loss_option_is_validated():
    assert build_config(Finetune, {"task_loss": "symmetric"}).task_loss == "symmetric"
    with pytest.raises(UserError, match="task_loss=both: must be one of image_to_text, symmetric"):
        build_config(LwF, {"task_loss": "both"})


# -- lwf: the second batch ------------------------------------------------------------------


def test_lwf_distils_on_a_second_seeded_batch_that_covers_the_training_set():
    learner, backbone = build(LwF)
    task = make_task(backbone)  # 12 training images, batch 4
    steps(learner).begin(task)
    first_order = learner.second.order.clone()
    pool = task.training_set.normalize(torch.from_numpy(task.training_set.images))
    seen = []
    for _ in range(3):  # one pass: every training image exactly once
        images = learner.second.next()
        assert images.shape == (4, 3, 16, 16)
        for img in images:
            seen.append(next(i for i in range(len(pool)) if torch.equal(pool[i], img)))
    assert sorted(seen) == list(range(12))
    again, _ = build(LwF)  # same seed and task: the same batches (resumable)
    torch.manual_seed(99)  # the global RNG does not decide them
    steps(again).begin(task)
    assert torch.equal(again.second.order, first_order)
    steps(again).end(task)
    steps(again).begin(make_task(backbone, index=1))  # another task: another order
    assert not torch.equal(again.second.order, first_order)


def test_lwf_training_mode_distils_the_training_batch():
    learner, backbone = build(LwF, {"distill_batch": "training"})
    task = make_task(backbone)
    steps(learner).begin(task)
    assert learner.second is None
    batch = make_batch(task)
    steps(learner).step(batch, StepInfo(0, 4, 0, 2))
    with torch.no_grad():
        _, scalars = learner.loss(batch, StepInfo(1, 4, 0, 2))
        expected = learner.distillation(batch.images, learner.teacher_text)
    assert float(scalars["distill_i2t"]) == pytest.approx(expected[0].item(), rel=1e-5)
    assert float(scalars["distill_i2t"]) > 1e-6


# -- zscl: pool or stream ---------------------------------------------------------------------


def test_zscl_stream_serves_unseen_images_each_step_and_a_slice_per_task():
    learner, backbone = build(ZSCL, {"reference": "stream"})
    task = make_task(backbone, iterations=3)  # 2 tasks x 3 steps x batch 4 = 24 images
    steps(learner).begin(task)
    assert len(learner.reference_pool) == 24
    batches = [learner._next_reference_batch() for _ in range(3)]
    assert torch.equal(torch.cat(batches), learner.reference_pool[:12])
    steps(learner).end(task)
    steps(learner).begin(make_task(backbone, iterations=3, index=1))
    assert torch.equal(learner._next_reference_batch(), learner.reference_pool[12:16])
    resumed, _ = build(ZSCL, {"reference": "stream"})  # resume at task 2: same slice
    steps(resumed).begin(make_task(backbone, iterations=3, index=1))
    assert torch.equal(resumed._next_reference_batch(), learner.reference_pool[12:16])


def test_zscl_pool_order_is_seeded_per_task():
    a, backbone = build(ZSCL)
    b, _ = build(ZSCL)
    torch.manual_seed(99)  # the global RNG does not decide the reference batches
    steps(a).begin(make_task(backbone))
    steps(b).begin(make_task(backbone))
    assert torch.equal(a._next_reference_batch(), b._next_reference_batch())


def test_zscl_stream_is_refused_in_the_real_world():
    backbone = random_tiny_clip(seed=0)
    cfg = build_config(ZSCL, {"reference": "stream", "reference_captions": "4"})
    ctx = make_ctx(backbone)
    ctx.world = "real"
    learner = ZSCL(backbone, cfg, ctx)
    with pytest.raises(UserError, match="reference=stream.*--set reference=pool"):
        steps(learner).begin(make_task(backbone))
