"""The baseline learners (lwf, zscl, wiseft): their loss terms, merges and registration."""

from __future__ import annotations

import copy
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cl_bench_baselines.lwf import LwF
from cl_bench_baselines.wiseft import WiSEFT
from cl_bench_baselines.zscl import ZSCL, is_merge_step
from learner_steps import steps

from cl_bench.api.context import RunContext
from cl_bench.api.hyperparameters import build_config
from cl_bench.api.learner import Batch, StepInfo, Task, TrainingSet
from cl_bench.api.registry import available_learners, get_learner
from cl_bench.api.toolkit import (
    clip_distillation,
    clip_features,
    running_average_,
    soft_cross_entropy,
    squared_distance,
)
from cl_bench.errors import UserError
from cl_bench.models.tiny import random_tiny_clip

BASELINES = {"lwf": LwF, "zscl": ZSCL, "wiseft": WiSEFT}


def make_ctx(backbone, with_reference: bool = True) -> RunContext:
    def reference(num_images: int, num_captions: int):
        gen = torch.Generator().manual_seed(123)
        images = torch.randn(num_images, 3, backbone.image_size, backbone.image_size, generator=gen)
        return images, [f"a photo of thing {i}." for i in range(num_captions)]

    return RunContext(
        device=torch.device("cpu"),
        seed=0,
        setting="xtail",
        task_agnostic=True,
        world="fake",
        num_tasks=2,
        paper_iterations=500,
        full_finetune_lr=1e-3,
        model_width=backbone.width,
        tokenize=lambda texts: backbone.tokenizer(texts),
        _reference=reference if with_reference else None,
    )


def make_training_set(num: int = 12, seed: int = 0) -> TrainingSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(num) % 3
    return TrainingSet(
        images, labels, lambda x: x.permute(0, 3, 1, 2).float() / 255.0, torch.device("cpu")
    )


def make_task(backbone, iterations: int = 4, index: int = 0) -> Task:
    classnames = ("red thing", "green thing", "blue thing")
    prompts = tuple(f"a photo of a {c}." for c in classnames)
    tokens = backbone.tokenizer(list(prompts))
    return Task(
        index, "aircraft", classnames, prompts, tokens, iterations, 4, 2, make_training_set()
    )


def make_batch(task: Task, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randn(4, 3, 16, 16, generator=gen),
        torch.tensor([0, 1, 2, 0]),
        task.text_tokens,
        task.index,
    )


def build(cls, overrides: dict[str, str] | None = None, with_reference: bool = True):
    torch.manual_seed(0)
    backbone = random_tiny_clip(seed=0)
    if cls is ZSCL:  # a small reference set keeps the tests fast
        overrides = {"reference_images": "16", "reference_captions": "12", **(overrides or {})}
    cfg = build_config(cls, overrides or {})
    return cls(backbone, cfg, make_ctx(backbone, with_reference)), backbone


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# -- shared terms ----------------------------------------------------------------------


def test_soft_cross_entropy_is_reference_ce_minus_teacher_entropy():
    gen = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    t = 2.0
    p = F.softmax(teacher / t, dim=1)
    reference = F.cross_entropy(student / t, p) * t**2  # ZSCL helpers.distillation
    entropy = F.cross_entropy(teacher / t, p) * t**2
    assert soft_cross_entropy(teacher, student, t).item() == pytest.approx(
        (reference - entropy).item(), rel=1e-5
    )
    assert soft_cross_entropy(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-6)
    i2t, t2i = clip_distillation(teacher, student, t)
    assert t2i.item() == pytest.approx(soft_cross_entropy(teacher.T, student.T, t).item())
    assert i2t.item() > 0 and t2i.item() > 0


def test_l2_term_is_explicit_sum_of_squared_differences():
    model = random_tiny_clip(seed=0).model
    anchor = copy.deepcopy(model)
    assert squared_distance(model, anchor).item() == 0.0
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.01 * (i % 3))
    explicit = sum(
        float(((p.detach() - q.detach()) ** 2).sum())
        for p, q in zip(model.parameters(), anchor.parameters(), strict=True)
    )
    assert explicit > 0
    assert squared_distance(model, anchor).item() == pytest.approx(explicit, rel=1e-5)


def test_running_average_matches_hand_computed_mean():
    snapshots = [torch.nn.Linear(3, 2) for _ in range(4)]
    average = copy.deepcopy(snapshots[0])  # seeded with the task-start weights, count 0
    for count, snap in enumerate(snapshots[1:], start=1):
        running_average_(average, snap, count)
    expected = torch.stack([s.weight.detach() for s in snapshots]).mean(0)
    assert torch.allclose(average.weight, expected, atol=1e-6)
    with pytest.raises(ValueError):
        running_average_(average, snapshots[0], 0)


# -- lwf -------------------------------------------------------------------------------


def test_lwf_distillation_zero_for_teacher_positive_after_drift_and_grads_only_in_student():
    learner, backbone = build(LwF)
    task = make_task(backbone)
    steps(learner).begin(task)
    batch = make_batch(task)
    i2t, t2i = learner.distillation(batch.images, learner.teacher_text)
    assert i2t.item() == pytest.approx(0.0, abs=1e-5) and t2i.item() == pytest.approx(0.0, abs=1e-5)

    steps(learner).step(batch, StepInfo(0, 4, 0, 2))  # the student moves, the teacher does not
    i2t, t2i = learner.distillation(batch.images, learner.teacher_text)
    assert i2t.item() > 1e-6 and t2i.item() > 1e-6
    learner.model.zero_grad(set_to_none=True)
    (i2t + t2i).backward()
    assert all(p.grad is None for p in learner.teacher.parameters())
    assert all(not p.requires_grad for p in learner.teacher.parameters())
    visual_grads = [p.grad for p in learner.model.visual.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in visual_grads)
    # reference default: the student's logits use the teacher's text features -> no text grads
    assert learner.model.token_embedding.weight.grad is None


def test_lwf_student_text_features_option_distills_the_text_encoder():
    learner, backbone = build(LwF, {"student_text_features": "student"})
    task = make_task(backbone)
    steps(learner).begin(task)
    steps(learner).step(make_batch(task), StepInfo(0, 4, 0, 2))
    batch = make_batch(task, seed=1)
    learner.model.zero_grad(set_to_none=True)
    _, txt = clip_features(learner.model, batch.images, batch.text_tokens)
    sum(learner.distillation(batch.images, txt)).backward()
    assert learner.model.token_embedding.weight.grad.abs().sum() > 0


# -- wiseft ----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.8, 0.3])
def test_wiseft_interpolation_matches_formula(alpha):
    learner, backbone = build(WiSEFT, {"alpha": str(alpha)})
    task = make_task(backbone)
    steps(learner).begin(task)
    before = params(learner.model)
    for s in range(3):
        steps(learner).step(make_batch(task, s), StepInfo(s, 3, 0, 2))
    finetuned = params(learner.model)
    assert any(not torch.equal(before[n], finetuned[n]) for n in before)
    steps(learner).end(task)
    for name, p in learner.model.named_parameters():
        expected = alpha * finetuned[name] + (1 - alpha) * before[name]
        assert torch.allclose(p, expected, atol=1e-6), name
    assert not hasattr(learner, "previous")  # the copy is freed between tasks


def test_wiseft_rejects_alpha_outside_unit_interval():
    with pytest.raises(UserError, match="alpha"):
        build_config(WiSEFT, {"alpha": "1.5"})


# -- zscl ------------------------------------------------------------------------------


def test_zscl_merge_steps_follow_the_period_and_end_on_the_final_step():
    merges = [s for s in range(80) if is_merge_step(s, 80, 8)]
    assert merges == [*range(0, 80, 8), 79]
    assert [s for s in range(5) if is_merge_step(s, 5, 2)] == [0, 2, 4]


def test_zscl_ensemble_is_running_average_of_task_start_and_merge_snapshots():
    learner, backbone = build(ZSCL, {"ensemble_period_fraction": "0.4"})  # 5 steps -> period 2
    task = make_task(backbone, iterations=5)
    steps(learner).begin(task)
    assert learner.period == 2 and learner.ctx.derived["zscl.ensemble_period_steps"] == 2
    snapshots = [params(learner.model)]  # task start
    for s in range(5):
        steps(learner).step(make_batch(task, s), StepInfo(s, 5, 0, 2))
        if s in (0, 2, 4):
            snapshots.append(params(learner.model))
    steps(learner).end(task)
    for name, p in learner.model.named_parameters():
        expected = torch.stack([snap[name] for snap in snapshots]).mean(0)
        assert torch.allclose(p, expected, atol=1e-6), name


def test_zscl_l2_logged_equals_explicit_sum_to_task_start_weights():
    learner, backbone = build(ZSCL)
    task = make_task(backbone)
    steps(learner).begin(task)
    start = params(learner.model)
    first = steps(learner).step(make_batch(task, 0), StepInfo(0, 4, 0, 2))
    assert float(first["l2"]) == 0.0
    moved = params(learner.model)
    explicit = sum(float(((moved[n] - start[n]) ** 2).sum()) for n in start)
    second = steps(learner).step(make_batch(task, 1), StepInfo(1, 4, 0, 2))
    assert explicit > 0 and float(second["l2"]) == pytest.approx(explicit, rel=1e-4)


def test_zscl_distillation_targets_the_zero_shot_model_across_tasks():
    learner, backbone = build(ZSCL)
    zeroshot = params(backbone.model)
    for t in range(2):
        task = make_task(backbone, iterations=3, index=t)
        steps(learner).begin(task)
        i2t, t2i = learner.zeroshot_distillation(learner.reference_pool[:4])
        if t == 0:  # the model is still the zero-shot model: nothing to distill
            assert abs(i2t.item()) < 1e-5 and abs(t2i.item()) < 1e-5
        else:  # the teacher stayed zero-shot while the model moved
            assert i2t.item() > 1e-6
        for s in range(3):
            steps(learner).step(make_batch(task, s), StepInfo(s, 3, t, 2))
        steps(learner).end(task)
    for name, p in learner.zeroshot.named_parameters():
        assert torch.equal(p, zeroshot[name]), name


def test_zscl_missing_reference_data_is_a_user_error_naming_the_option():
    learner, backbone = build(ZSCL, with_reference=False)
    with pytest.raises(UserError, match="zscl needs reference.*--reference"):
        steps(learner).begin(make_task(backbone))


def test_zscl_state_dict_round_trips_and_refuses_other_zero_shot_weights():
    learner, backbone = build(ZSCL)
    task = make_task(backbone, iterations=2)
    steps(learner).begin(task)
    for s in range(2):
        steps(learner).step(make_batch(task, s), StepInfo(s, 2, 0, 2))
    steps(learner).end(task)
    state = learner.state_dict()
    fresh, _ = build(ZSCL)
    fresh.load_state_dict(state)
    for name, p in fresh.model.named_parameters():
        assert torch.equal(p, dict(learner.model.named_parameters())[name])
    other_backbone = random_tiny_clip(seed=1)
    other = ZSCL(other_backbone, fresh.cfg, make_ctx(other_backbone))
    with pytest.raises(UserError, match="different zero-shot weights"):
        other.load_state_dict(state)


# -- all baselines ---------------------------------------------------------------------


def test_entry_points_list_the_baselines():
    eps = {ep.name: ep.value for ep in entry_points(group="cl_bench.learners")}
    for name, cls in BASELINES.items():
        assert eps[name] == f"{cls.__module__}:{cls.__name__}"
        assert get_learner(name) is cls
        assert available_learners()[name] == eps[name]
        assert cls.description and "\n" not in cls.description


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_each_baseline_trains_two_tasks_on_a_tiny_model(name):
    learner, backbone = build(
        BASELINES[name], {"temperature": "3"} if name != "wiseft" else {"alpha": "0.5"}
    )
    start = params(learner.model)
    for t in range(2):
        task = make_task(backbone, iterations=2, index=t)
        steps(learner).begin(task)
        for s in range(2):
            scalars = steps(learner).step(make_batch(task, 10 * t + s), StepInfo(s, 2, t, 2))
            assert all(torch.isfinite(torch.as_tensor(v)) for v in scalars.values()), scalars
        steps(learner).end(task)
    assert any(not torch.equal(start[n], p) for n, p in learner.model.named_parameters())
    assert learner.model.logit_scale.item() == pytest.approx(start["logit_scale"].item())
    assert steps(learner).trainable_parameters > 0


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_each_baseline_runs_through_the_engine(name, tmp_path):
    from fakeworld import FakeWorld

    from cl_bench.engine.config import RunConfig
    from cl_bench.engine.loop import run

    overrides = {"lr": "1e-3"}
    if name == "zscl":
        overrides |= {"reference_images": "16", "reference_captions": "8"}
    cfg = RunConfig(
        setting="xtail",
        learner=name,
        iterations=3,
        batch_size=8,
        max_tasks=2,
        eval_limit=8,
        out=str(tmp_path / name),
        overrides=overrides,
    )
    outcome = run(cfg, world=FakeWorld())
    assert outcome.manifest["status"] == "finished"
    assert outcome.manifest["learner"]["config"]["lr"] == 1e-3
    if name == "zscl":
        assert outcome.manifest["derived"]["zscl.ensemble_period_steps"] == 1
        assert outcome.manifest["derived"]["zscl.reference_batch_size"] == 8
