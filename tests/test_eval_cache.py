"""The evaluation caches, guarded by counting encoder work (nothing is timed).

Text classifiers: once per dataset per evaluation, zero re-encodes across evaluations while
the text tower is bit-identical, a full re-encode as soon as any text-side tensor changes.
Image features: the same rule for the vision tower. Cached results equal fresh ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from fakeworld import FakeWorld

from cl_bench.api.learner import Batch, Learner, StepInfo
from cl_bench.api.registry import register_learner
from cl_bench.api.toolkit import clip_logits, contrastive_loss
from cl_bench.data.scoring import TEXT_CHUNK
from cl_bench.engine.config import RunConfig
from cl_bench.engine.evaluator import EvalCache, Evaluator, evaluate_all
from cl_bench.engine.loop import Engine
from cl_bench.errors import UserError

STREAM = ("aircraft", "caltech101", "dtd")
HOLDOUT = ("cifar100", "imagenet")


class Counter:
    """Wraps a model's encoders; counts eval-time calls and rows (inference mode only)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.text_calls = self.text_rows = self.image_rows = 0
        encode_text, encode_image = model.encode_text, model.encode_image

        def text(tokens, *a, **k):
            if torch.is_inference_mode_enabled():
                self.text_calls += 1
                self.text_rows += tokens.shape[0]
            return encode_text(tokens, *a, **k)

        def image(images, *a, **k):
            if torch.is_inference_mode_enabled():
                self.image_rows += images.shape[0]
            return encode_image(images, *a, **k)

        model.encode_text, model.encode_image = text, image

    def reset(self) -> tuple[int, int, int]:
        out = (self.text_calls, self.text_rows, self.image_rows)
        self.text_calls = self.text_rows = self.image_rows = 0
        return out


@pytest.fixture()
def setup():
    world = FakeWorld()
    backbone = world.backbone(torch.device("cpu"))
    names = STREAM + HOLDOUT
    infos = {n: world.dataset_info(n) for n in names}
    tests = {n: world.load_split(n, "test", None, 0, backbone.image_size) for n in names}
    prompts = sum(infos[n].num_classes * len(infos[n].templates) for n in names)
    images = sum(len(t) for t in tests.values())
    return backbone, infos, tests, prompts, images


def _eval(backbone, infos, tests, cache, precision="fp32"):
    return evaluate_all(
        backbone.model, backbone, infos, tests, STREAM, HOLDOUT, True, 7,
        torch.device("cpu"), cache=cache, precision=precision,
    )  # fmt: skip


def test_once_per_dataset_per_evaluation_without_cache(setup):
    backbone, infos, tests, prompts, images = setup
    counter = Counter(backbone.model)
    for _ in range(2):
        _eval(backbone, infos, tests, None)
        assert counter.reset() == (len(STREAM + HOLDOUT), prompts, images)


def test_unchanged_model_reencodes_nothing_and_gives_identical_results(setup):
    backbone, infos, tests, prompts, images = setup
    counter, cache = Counter(backbone.model), EvalCache()
    first = _eval(backbone, infos, tests, cache)
    assert counter.reset() == (len(STREAM + HOLDOUT), prompts, images)
    second = _eval(backbone, infos, tests, cache)
    assert counter.reset() == (0, 0, 0)
    assert first == second
    assert cache.stats() == {"text_hits": 5, "text_misses": 5, "image_hits": 5, "image_misses": 5}


def test_vision_only_change_keeps_text_classifiers(setup):
    backbone, infos, tests, prompts, images = setup
    counter, cache = Counter(backbone.model), EvalCache()
    _eval(backbone, infos, tests, cache)
    counter.reset()
    with torch.no_grad():
        backbone.model.visual.conv1.weight.mul_(1.5)
    cached = _eval(backbone, infos, tests, cache)
    assert counter.reset() == (0, 0, images)
    assert cached == _eval(backbone, infos, tests, None)  # equal to a fresh evaluation


@pytest.mark.parametrize("how", ["in_place", "dot_data", "new_tensor", "buffer"])
def test_any_text_side_change_invalidates(setup, how):
    """Also edits that bypass autograd's version counters (.data, swapped tensors)."""
    backbone, infos, tests, prompts, images = setup
    model = backbone.model
    counter, cache = Counter(model), EvalCache()
    _eval(backbone, infos, tests, cache)
    counter.reset()
    with torch.no_grad():
        if how == "in_place":
            model.transformer.resblocks[0].mlp.c_fc.weight.mul_(1.1)
        elif how == "dot_data":
            model.token_embedding.weight.data[:, 0] += 0.5
        elif how == "new_tensor":
            model.text_projection = torch.nn.Parameter(model.text_projection.detach() * 2)
        else:
            model.attn_mask.fill_(0.0)
    changed = _eval(backbone, infos, tests, cache)
    assert counter.reset() == (len(STREAM + HOLDOUT), prompts, 0)
    assert changed == _eval(backbone, infos, tests, None)


def test_precision_is_part_of_the_key_and_fp16_needs_cuda(setup):
    backbone, infos, tests, prompts, images = setup
    counter, cache = Counter(backbone.model), EvalCache()
    _eval(backbone, infos, tests, cache)
    counter.reset()
    _eval(backbone, infos, tests, cache, precision="bf16")
    assert counter.reset() == (len(STREAM + HOLDOUT), prompts, images)
    with pytest.raises(UserError, match="fp16 needs --device cuda"):
        RunConfig(precision="fp16", device="cpu").validate()  # auto is checked once resolved
    with pytest.raises(UserError, match="unknown precision"):
        RunConfig(precision="fp64").validate()


def test_text_chunking_splits_large_label_spaces(setup, monkeypatch):
    backbone, infos, tests, prompts, images = setup
    monkeypatch.setattr("cl_bench.data.scoring.TEXT_CHUNK", 4)
    counter = Counter(backbone.model)
    _eval(backbone, infos, tests, None)
    calls, rows, _ = counter.reset()
    expected = sum(-(-infos[n].num_classes * len(infos[n].templates) // 4) for n in infos)
    assert (calls, rows) == (expected, prompts) and TEXT_CHUNK == 1024


@register_learner("test_vision_only")
class VisionOnly(Learner):
    """Fine-tunes the vision tower only: evaluations must never re-encode prompts."""

    @dataclass
    class Config:
        lr: float = 1e-2

    def begin_task(self, task) -> None:
        self.model.requires_grad_(False)
        self.model.visual.requires_grad_(True)
        self.opt = torch.optim.SGD(self.model.visual.parameters(), lr=self.cfg.lr)

    def train_step(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        loss = contrastive_loss(
            clip_logits(self.model, batch.images, batch.text_tokens), batch.labels
        )
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}


def _engine_eval_counts(
    tmp_path, monkeypatch, learner: str
) -> tuple[list[tuple[int, int, int]], int, int]:
    """(text calls, text rows, image rows) per evaluation of a 2-task run, and the totals."""
    cfg = RunConfig(
        setting="xtail", learner=learner, iterations=2, batch_size=8, max_tasks=2,
        out=str(tmp_path / learner), overrides={"lr": "1e-2"},
    )  # fmt: skip
    engine = Engine(cfg, world=FakeWorld())
    per_eval: list[tuple[int, int, int]] = []
    original = Evaluator.evaluate
    counters: list[Counter] = []

    def counted(self, learner_obj, label):
        if not counters:
            counters.append(Counter(self.backbone.model))
        results = original(self, learner_obj, label)
        per_eval.append(counters[0].reset())
        return results

    monkeypatch.setattr(Evaluator, "evaluate", counted)
    engine.run()
    infos = {n: engine.world.dataset_info(n) for n in engine.setting.eval_datasets}
    # X-TAIL: one prompt per class (the setting's union_classifier), no template averaging
    prompts = sum(i.num_classes for i in infos.values())
    return per_eval, prompts, len(infos)


def test_engine_vision_only_learner_encodes_prompts_once_per_run(tmp_path, monkeypatch):
    per_eval, prompts, datasets = _engine_eval_counts(tmp_path, monkeypatch, "test_vision_only")
    assert len(per_eval) == 3  # row 0 + 2 tasks
    assert per_eval[0][:2] == (datasets, prompts)
    assert [e[:2] for e in per_eval[1:]] == [(0, 0), (0, 0)]
    assert all(e[2] > 0 for e in per_eval)  # the vision tower changed: images re-encoded


def test_engine_finetune_reencodes_once_per_dataset_per_evaluation(tmp_path, monkeypatch):
    per_eval, prompts, datasets = _engine_eval_counts(tmp_path, monkeypatch, "finetune")
    assert [e[:2] for e in per_eval] == [(datasets, prompts)] * 3


def test_top1_counts_by_domain_block_against_a_hand_computed_case():
    """Union classifier of two domains (rows 0-1 and 2-4): where each prediction lands."""
    from cl_bench.engine.evaluator import top1_counts

    classifier = torch.eye(5)
    # predicted rows 0, 3, 4, 1, 2; labels of domain 1 (offset 2): targets 2, 3, 4, 4, 2
    features = torch.eye(5)[[0, 3, 4, 1, 2]]
    labels = np.array([0, 1, 2, 2, 0])
    correct, per_domain = top1_counts(features, labels, classifier, 2, np.array([0, 2]))
    assert correct == 3  # images 1, 2 and 4
    assert per_domain == (2, 3)  # predictions 0 and 1 in domain 0; 3, 4 and 2 in domain 1
    assert top1_counts(features, labels, classifier, 2) == (3, ())
