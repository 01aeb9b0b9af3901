"""lwf_vr as ZSCL's code runs it: lwf's distillation over a random vocabulary
(``--ref-sentences random`` -> ``helpers.virtual_vocab``), and plain lwf without it (issue 22)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cl_bench_baselines.lwf import LwF
from cl_bench_baselines.lwf_vr import LwFVR
from learner_steps import steps
from test_baselines import build, make_batch, make_task

from cl_bench.api.learner import StepInfo
from cl_bench.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

SOT, EOT = 49406, 49407  # open_clip's <start_of_text>, <end_of_text>


def test_the_vocabulary_is_the_references_random_sentences():
    learner, backbone = build(LwFVR)
    tokens = learner.vocabulary_tokens
    context = backbone.tokenizer([""]).shape[1]  # 16 for the tiny test model
    # virtual_vocab(length=10, n_class=1000): [SOT, 10 ids in [0, 49408), EOT, 0 ...]
    assert tokens.shape == (1000, context) and tokens.dtype == torch.long
    assert (tokens[:, 0] == SOT).all() and (tokens[:, 11] == EOT).all()
    assert (tokens[:, 12:] == 0).all()
    body = tokens[:, 1:11]
    assert body.min() >= 0 and body.max() < 49408
    assert body.unique().numel() > 9000  # drawn over the whole vocabulary, not a few words
    # fixed for the run: the same sentences for every task, and for the same seed
    again, _ = build(LwFVR)
    assert torch.equal(again.vocabulary_tokens, tokens)


def test_the_replay_term_is_computed_over_the_vocabulary_by_hand():
    learner, backbone = build(LwFVR, {"distill_batch": "training"})
    task = make_task(backbone)
    steps(learner).begin(task)
    with torch.no_grad():  # move the student away from the teacher
        for p in learner.model.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batch(task)
    teacher, student, tokens = learner.teacher, learner.model, learner.vocabulary_tokens
    with torch.no_grad():
        vocab = F.normalize(teacher.encode_text(tokens), dim=-1)  # the teacher's, [1000, D]
        scale = student.logit_scale.exp()
        t_logits = scale * F.normalize(teacher.encode_image(batch.images), dim=-1) @ vocab.T
        s_logits = scale * F.normalize(student.encode_image(batch.images), dim=-1) @ vocab.T
    assert t_logits.shape == (4, 1000)

    def kl_t2(t: torch.Tensor, s: torch.Tensor) -> float:
        """mean over rows of Σ p (log p − log q) · T², p = softmax(t / 2), q = softmax(s / 2)."""
        p, q = torch.softmax(t.double() / 2, dim=1), torch.softmax(s.double() / 2, dim=1)
        return float((p * (p.log() - q.log())).sum(dim=1).mean() * 4)

    _, scalars = learner.loss(batch, StepInfo(0, 4, 0, 2))
    assert float(scalars["distill_i2t"]) == pytest.approx(kl_t2(t_logits, s_logits), rel=1e-4)
    # text->image: each of the 1000 sentences against the batch's 4 images
    assert float(scalars["distill_t2i"]) == pytest.approx(kl_t2(t_logits.T, s_logits.T), rel=1e-4)
    assert float(scalars["distill_i2t"]) > 1e-4


@pytest.mark.parametrize("distill_batch", ["separate", "training"])
def test_without_the_replay_it_is_plain_lwf(distill_batch):
    plain, backbone = build(LwF, {"distill_batch": distill_batch})
    off, _ = build(LwFVR, {"distill_batch": distill_batch, "vocabulary": "task"})
    on, _ = build(LwFVR, {"distill_batch": distill_batch})
    assert off.vocabulary_tokens is None
    results = []
    for learner in (plain, off, on):
        task = make_task(backbone)
        steps(learner).begin(task)
        logs = [steps(learner).step(make_batch(task, s), StepInfo(s, 3, 0, 2)) for s in range(3)]
        results.append([{k: float(v) for k, v in e.items() if k != "lr"} for e in logs])
    assert results[1] == results[0]  # term for term, step for step
    assert results[2][1]["distill_i2t"] != results[0][1]["distill_i2t"]  # the replay differs


def test_a_vocabulary_longer_than_the_context_is_a_user_error():
    with pytest.raises(UserError, match="vocabulary_length=15 does not fit"):
        build(LwFVR, {"vocabulary_length": "15"})
