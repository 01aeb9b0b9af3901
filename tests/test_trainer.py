"""The engine's training step (`cl_bench.engine.trainer.Trainer`) against hand-written loops.

A tiny two-layer MLP stands in for CLIP: the trainer only sees `learner.model`, the
learner's `trainable`/`optimizer_config`/`loss`/`after_step`, and batches.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.api.optim import OptimizerConfig, warmup_cosine
from cl_bench.data.world import ImageSet
from cl_bench.engine.trainer import Trainer
from cl_bench.errors import UserError

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def make_task(iterations: int = 5) -> Task:
    classes = ("a", "b", "c")
    return Task(0, "tiny", classes, classes, torch.zeros(3, 2, dtype=torch.long), iterations, 6, 1)


def make_batch(step: int, device: torch.device = CPU) -> Batch:
    gen = torch.Generator().manual_seed(100 + step)
    images = torch.randn(6, 4, generator=gen)
    labels = torch.randint(0, 3, (6,), generator=gen)
    return Batch(images.to(device), labels.to(device), torch.zeros(3, 2, dtype=torch.long), 0)


def info(step: int, total: int) -> StepInfo:
    return StepInfo(step, total, 0, 1)


class Tiny(Learner):
    """Cross-entropy of the MLP; trains `groups` (default: every parameter)."""

    def __init__(self, model: nn.Module, cfg: OptimizerConfig, groups: Any = None) -> None:
        super().__init__(SimpleNamespace(model=model), cfg, None)  # type: ignore[arg-type]
        self.groups = groups

    def trainable(self, task: Task) -> Any:
        return self.groups if self.groups is not None else list(self.model.parameters())

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        loss = F.cross_entropy(self.model(batch.images), batch.labels)
        return loss, {"twice": 2 * loss.detach()}


def hand_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(model(batch.images), batch.labels)


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


def run_steps(learner: Learner, trainer: Trainer, steps: int) -> tuple[Any, list[dict]]:
    task = make_task(steps)
    learner.begin_task(task)
    run = trainer.begin(learner, task)
    assert run is not None
    logged = [trainer.step(learner, run, make_batch(s), info(s, steps)) for s in range(steps)]
    return run, logged


# -- AdamW and the schedule -------------------------------------------------------------


def test_adamw_and_warmup_cosine_equal_a_hand_written_loop_bit_for_bit():
    cfg = OptimizerConfig(
        lr=1e-2, weight_decay=0.05, beta1=0.8, beta2=0.95, eps=1e-6, warmup_fraction=0.4
    )
    model = make_model()
    reference = copy.deepcopy(model)
    run, logged = run_steps(Tiny(model, cfg), Trainer(CPU), 5)

    opt = torch.optim.AdamW(
        reference.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(5, 2))  # round(0.4 * 5) = 2
    losses = []
    for s in range(5):
        opt.zero_grad()
        loss = hand_loss(reference, make_batch(s))
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
    assert_same_parameters(model, reference)
    assert [float(e["loss"]) for e in logged] == [float(x) for x in losses]
    assert [float(e["twice"]) for e in logged] == [2 * float(x) for x in losses]
    # warm-up 1/2, 2/2, then cosine over the 3 remaining steps: 1, (1 + cos(pi/3))/2, ...
    factors = [0.5, 1.0, 1.0, 0.75, 0.25]
    assert [e["lr"] for e in logged] == pytest.approx([1e-2 * f for f in factors], abs=1e-12)
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # cosine ends at 0


def test_per_group_lr_is_honoured_and_follows_the_schedule():
    model = make_model()
    first, second = model[0], model[2]
    groups = [
        {"params": list(first.parameters()), "lr": 0.1},
        {"params": list(second.parameters())},
    ]
    cfg = OptimizerConfig(lr=0.01)  # cosine, no warm-up
    learner, trainer, task = Tiny(model, cfg, groups), Trainer(CPU), make_task(4)
    reference = copy.deepcopy(model)
    run = trainer.begin(learner, task)
    seen = []
    for s in range(4):
        seen.append([g["lr"] for g in run.optimizer.param_groups])
        trainer.step(learner, run, make_batch(s), info(s, 4))
    factors = [0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert [g[0] for g in seen] == pytest.approx([0.1 * f for f in factors], abs=1e-12)
    assert [g[1] for g in seen] == pytest.approx([0.01 * f for f in factors], abs=1e-12)

    opt = torch.optim.AdamW(
        [
            {"params": list(reference[0].parameters()), "lr": 0.1},
            {"params": reference[2].parameters()},
        ],
        lr=0.01,
        weight_decay=0.0,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(4, 0))
    for s in range(4):
        opt.zero_grad()
        hand_loss(reference, make_batch(s)).backward()
        opt.step()
        sched.step()
    assert_same_parameters(model, reference)


def test_loose_parameters_form_the_first_group_before_the_dict_groups():
    model = make_model()
    groups = [{"params": list(model[0].parameters()), "lr": 0.5}, *model[2].parameters()]
    run = Trainer(CPU).begin(Tiny(model, OptimizerConfig(lr=0.01), groups), make_task(3))
    pg = run.optimizer.param_groups
    assert [g["lr"] for g in pg] == [0.01, 0.5]
    assert [id(p) for p in pg[0]["params"]] == [id(p) for p in model[2].parameters()]


# -- clipping ---------------------------------------------------------------------------


def test_grad_clip_norm_equals_clipping_by_hand_and_logs_the_grad_norm():
    # eps large next to the clipped gradients: Adam's update then depends on the clipping
    cfg = OptimizerConfig(lr=1e-2, eps=1e-2, grad_clip_norm=1e-3)
    model = make_model()
    reference, unclipped = copy.deepcopy(model), copy.deepcopy(model)
    run, logged = run_steps(Tiny(model, cfg), Trainer(CPU), 3)

    def hand(m: nn.Module, clip: bool) -> list[torch.Tensor]:
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, eps=1e-2, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(3, 0))
        norms = []
        for s in range(3):
            opt.zero_grad()
            hand_loss(m, make_batch(s)).backward()
            if clip:
                norms.append(nn.utils.clip_grad_norm_(list(m.parameters()), 1e-3))
            opt.step()
            sched.step()
        return norms

    norms = hand(reference, clip=True)
    hand(unclipped, clip=False)
    assert_same_parameters(model, reference)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)  # the clipped gradients of the last step
    total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    assert total == pytest.approx(1e-3, rel=1e-4)
    assert all(torch.equal(e["grad_norm"], n) for e, n in zip(logged, norms, strict=True))
    assert all(float(n) > 1e-3 for n in norms)  # the norm before clipping is logged
    assert any(
        not torch.equal(p, q)
        for p, q in zip(model.parameters(), unclipped.parameters(), strict=True)
    )


def test_no_grad_norm_is_logged_without_clipping():
    _, logged = run_steps(Tiny(make_model(), OptimizerConfig(lr=1e-2)), Trainer(CPU), 2)
    assert all("grad_norm" not in e for e in logged)


# -- what trains --------------------------------------------------------------------------


def test_parameters_not_declared_are_frozen_and_unchanged():
    model = make_model()
    model[2].requires_grad_(False)  # declared ones are switched on by the trainer
    before = copy.deepcopy(model)
    learner = Tiny(model, OptimizerConfig(lr=1e-2), list(model[2].parameters()))
    run, _ = run_steps(learner, Trainer(CPU), 3)
    assert run.trainable_parameters == sum(p.numel() for p in model[2].parameters())
    assert all(not p.requires_grad for p in model[0].parameters())
    assert all(p.requires_grad for p in model[2].parameters())
    for p, q in zip(model[0].parameters(), before[0].parameters(), strict=True):
        assert torch.equal(p, q) and p.grad is None
    assert all(
        not torch.equal(p, q)
        for p, q in zip(model[2].parameters(), before[2].parameters(), strict=True)
    )


def test_empty_trainable_begins_nothing():
    learner = Tiny(make_model(), OptimizerConfig(lr=1e-2), [])
    assert Trainer(CPU).begin(learner, make_task()) is None


# -- after_step ---------------------------------------------------------------------------


class Watches(Tiny):
    """Records what after_step sees."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[torch.Tensor, Any, int]] = []

    def after_step(self, step: StepInfo) -> dict[str, Any]:
        self.seen.append((self.model[2].weight.detach().clone(), step.optimizer, step.step))
        return {"after": float(step.step) + 0.5}


def test_after_step_sees_the_stepped_weights_and_the_trainers_optimizer():
    model = make_model()
    learner, trainer, task = Watches(model, OptimizerConfig(lr=1e-2)), Trainer(CPU), make_task(3)
    run = trainer.begin(learner, task)
    for s in range(3):
        before = model[2].weight.detach().clone()
        logged = trainer.step(learner, run, make_batch(s), info(s, 3))
        weight, optimizer, step = learner.seen[-1]
        assert torch.equal(weight, model[2].weight) and not torch.equal(weight, before)
        assert optimizer is run.optimizer and step == s
        assert logged["after"] == s + 0.5


def test_after_step_scalars_reach_the_train_log():
    model = make_model()
    learner, trainer, task = (
        Watches(model, OptimizerConfig(lr=1e-2)),
        Trainer(CPU, log_every=2),
        make_task(3),
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(12, 2, 2, 1), dtype=np.uint8)
    train = ImageSet(images, np.arange(12) % 3, "tiny")
    run = trainer.begin(learner, task)
    log: list[dict[str, Any]] = []
    trainer.train(learner, run, train, lambda t: t.float().reshape(len(t), -1) / 255, 0, log)
    assert [e["step"] for e in log] == [2, 3]  # every 2 steps and the last one
    assert [e["after"] for e in log] == [1.5, 2.5]
    assert all(isinstance(v, float) for e in log for v in e.values() if not isinstance(v, int))


class ManyScalars(Tiny):
    """Scalars of every kind a learner may log: the one-copy flush must give float() of each."""

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, _ = super().loss(batch, step)
        third = loss.detach() / 3
        return loss, {
            "fp32": third,
            "bf16": third.to(torch.bfloat16),
            "fp16": third.to(torch.float16),
            "shape_1": third.reshape(1),
            "count": torch.tensor(step.step + 2**40 + 1),  # int64, beyond fp32's exact range
            "flag": torch.tensor(step.step % 2 == 0),
            "python": step.step / 7,
        }


def test_flushed_scalars_equal_float_of_each_one_whatever_its_dtype():
    learner = ManyScalars(make_model(), OptimizerConfig(lr=1e-2))
    task = make_task(4)
    learner.begin_task(task)
    trainer = Trainer(CPU, log_every=2)
    run = trainer.begin(learner, task)
    assert run is not None
    pending = [(s, trainer.step(learner, run, make_batch(s), info(s, 4))) for s in range(4)]
    entry = trainer._flush(task, pending, [], None)
    last = pending[-1][1]
    assert entry["step"] == 4
    for key, value in last.items():
        assert entry[key] == float(value) and type(entry[key]) is float, key
    assert entry["count"] == 3 + 2**40 + 1 and entry["flag"] == 0.0


# -- what loss() may return -----------------------------------------------------------------


class BadLoss(Tiny):
    def __init__(self, answer: str) -> None:
        super().__init__(make_model(), OptimizerConfig(lr=1e-2))
        self.answer = answer

    def loss(self, batch: Batch, step: StepInfo) -> Any:
        loss, _ = super().loss(batch, step)
        if self.answer == "bare tensor":
            return loss
        if self.answer == "vector":
            return loss.repeat(2), {}
        return loss, {"loss": loss.detach()}


@pytest.mark.parametrize(
    "answer, message",
    [
        ("bare tensor", r"BadLoss\.loss returned a Tensor; return \(loss, \{scalars\}\)"),
        ("vector", r"BadLoss\.loss's loss is not a 0-dim tensor"),
        ("loss key", r"BadLoss\.loss: the 'loss' scalar is the engine's"),
    ],
)
def test_malformed_loss_answer_is_a_user_error_naming_the_learner(answer, message):
    learner, trainer, task = BadLoss(answer), Trainer(CPU), make_task(2)
    run = trainer.begin(learner, task)
    with pytest.raises(UserError, match=message):
        trainer.step(learner, run, make_batch(0), info(0, 2))


# -- the escape hatch ---------------------------------------------------------------------


class OwnStep(Tiny):
    """Plain SGD by hand; never asked for a loss."""

    def begin_task(self, task: Task) -> None:
        self.calls = 0

    def trainable(self, task: Task) -> Any:
        return []

    def loss(self, batch: Batch, step: StepInfo) -> Any:
        raise AssertionError("the trainer must not call loss() of a learner with train_step")

    def train_step(self, batch: Batch, step: StepInfo) -> dict[str, Any]:
        self.calls += 1
        loss = hand_loss(self.model, batch)
        grads = torch.autograd.grad(loss, list(self.model.parameters()))
        with torch.no_grad():
            for p, g in zip(self.model.parameters(), grads, strict=True):
                p.sub_(0.1 * g)
        return {"own": loss.detach()}


def test_train_step_override_is_called_and_no_optimizer_is_built(monkeypatch):
    def no_optimizer(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("build_optimizer called for a learner that owns its step")

    monkeypatch.setattr("cl_bench.engine.trainer.build_optimizer", no_optimizer)
    model = make_model()
    before = copy.deepcopy(model)
    learner, trainer, task = OwnStep(model, OptimizerConfig(lr=1e-2)), Trainer(CPU), make_task(2)
    learner.begin_task(task)
    run = trainer.begin(learner, task)
    assert run is not None and run.optimizer is None and run.scheduler is None
    logged = [trainer.step(learner, run, make_batch(s), info(s, 2)) for s in range(2)]
    assert learner.calls == 2 and set(logged[0]) == {"own"}
    assert any(
        not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters(), strict=True)
    )


# -- precision ----------------------------------------------------------------------------


def test_fp32_has_a_disabled_grad_scaler():
    run = Trainer(CPU, precision="fp32").begin(
        Tiny(make_model(), OptimizerConfig(lr=1e-2)), make_task()
    )
    assert run.scaler.is_enabled() is False


class OverflowsOnce(Tiny):
    """The first step's scaled gradients overflow: a step GradScaler exists to skip."""

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, _ = super().loss(batch, step)
        return (loss * 1e34 if step.step == 0 else loss), {}


def train_through_an_overflow(clip: float | None) -> tuple[Any, list[dict[str, Any]]]:
    # The CPU GradScaler runs the same code path as CUDA's (the config refuses fp16 on CPU
    # only because CPU autocast has no fp16; the trainer itself does not care).
    learner = OverflowsOnce(make_model(), OptimizerConfig(lr=1e-2, grad_clip_norm=clip))
    trainer, task = Trainer(CPU, precision="fp16", log_every=1), make_task(3)
    run = trainer.begin(learner, task)
    assert run.scaler.is_enabled()
    images = np.random.default_rng(0).integers(0, 255, size=(12, 2, 2, 1), dtype=np.uint8)
    log: list[dict[str, Any]] = []
    trainer.train(
        learner, run, ImageSet(images, np.arange(12) % 3, "tiny"),
        lambda t: t.float().reshape(len(t), -1) / 255, 0, log,
    )  # fmt: skip
    return run, log


# torch warns that the schedule stepped past the skipped optimizer step (as AMP loops do)
SKIPPED_STEP_WARNING = "ignore:Detected call of `lr_scheduler.step\\(\\)` before"


@pytest.mark.filterwarnings(SKIPPED_STEP_WARNING)
def test_fp16_step_skipped_by_the_grad_scaler_does_not_stop_the_run():
    run, log = train_through_an_overflow(clip=None)
    assert [e["step"] for e in log] == [1, 2, 3]
    assert run.scaler.get_scale() == 32768.0  # the overflow was seen, the step skipped


@pytest.mark.filterwarnings(SKIPPED_STEP_WARNING)
def test_fp16_skipped_step_with_clipping_does_not_stop_the_run():
    run, log = train_through_an_overflow(clip=1.0)
    assert [e["step"] for e in log] == [1, 2, 3]
    assert run.scaler.get_scale() == 32768.0
    assert sum(e["skipped_steps"] for e in log) >= 1  # logged as a skip, not as a NaN norm


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs CUDA")
def test_fp16_scales_the_loss_like_a_hand_written_grad_scaler_loop():
    cuda = torch.device("cuda")
    cfg = OptimizerConfig(lr=1e-2, grad_clip_norm=0.5)
    model = make_model().to(cuda)
    reference = copy.deepcopy(model)
    learner, trainer, task = Tiny(model, cfg), Trainer(cuda, precision="fp16"), make_task(3)
    run = trainer.begin(learner, task)
    assert run.scaler.is_enabled() is True
    logged = [trainer.step(learner, run, make_batch(s, cuda), info(s, 3)) for s in range(3)]

    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(3, 0))
    scaler = torch.amp.GradScaler("cuda")
    norms = []
    for s in range(3):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = hand_loss(reference, make_batch(s, cuda))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norms.append(nn.utils.clip_grad_norm_(list(reference.parameters()), 0.5))
        scaler.step(opt)
        scaler.update()
        sched.step()
    assert run.scaler.get_scale() == scaler.get_scale()
    assert all(math.isfinite(float(v)) for e in logged for v in e.values())
    # same ops on the same device; compared with a tolerance as this runs only where CUDA is
    for e, n in zip(logged, norms, strict=True):
        torch.testing.assert_close(e["grad_norm"], n)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)
        assert p.dtype == torch.float32  # fp32 master weights
