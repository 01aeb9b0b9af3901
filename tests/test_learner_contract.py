"""The contract every registered learner keeps (timm-style: one test, every learner).

Parametrized over `available_learners()` (the built-ins and the `cl_bench.learners` entry
points), so a learner registered later is covered without editing this file. Each learner
runs two tiny X-TAIL tasks on the fake world through the engine's one path (`Engine.run`,
whose `Trainer` is wrapped to look at the model around each task's steps), then:

- every logged scalar is finite;
- a task changes only the parameters `trainable(task)` declared at the task's start (from
  before `begin_task` to after the steps, before `end_task`: merges write into the base
  weights there), and those it did not declare have requires_grad False while it trains;
- `trainable()` is empty exactly for the learners with `uses_training_budget = False`
  (zeroshot, the closed-form RAIL forms), which run no steps and never move the model; a
  learner that trains answers
  `optimizer_config(task)` with an `OptimizerConfig` whose lr is resolved (> 0);
- `state_dict()` after the run survives the checkpoint format unchanged and loads into a
  fresh instance built the same way, which then has identical parameters and state;
- the eval model's extra inference parameters are the learner's entry in
  `EXTRA_INFERENCE_PARAMETERS`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fakeworld import FakeWorld

from cl_bench.api.hyperparameters import build_config
from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.api.optim import OptimizerConfig
from cl_bench.api.registry import available_learners
from cl_bench.api.toolkit import clip_logits, contrastive_loss
from cl_bench.engine.checkpoint import load_checkpoint, save_checkpoint
from cl_bench.engine.config import RunConfig
from cl_bench.engine.loop import Engine, RunParts
from cl_bench.engine.trainer import TaskTraining, Trainer

TESTS_DIR = Path(__file__).resolve().parent

# Parameters the eval model has beyond the base model's, per learner (default 0: the
# learner merges or discards what it adds). A learner that keeps
# parameters for inference (e.g. MoE adapters and their router) adds its count here.
EXTRA_INFERENCE_PARAMETERS: dict[str, int] = {
    "clip_ast": 0,
    "drslora": 0,
    "finetune": 0,
    "gated_lora": 0,
    "icarl": 0,  # the exemplar memory is images, not parameters (manifest: icarl.memory_*)
    "individual": 0,
    "joint": 0,
    "lora": 0,
    "lwf": 0,
    # MoE-Adapters: what one image runs through (fake world: width 32, one block per encoder,
    # D = 32): per block the top-2 experts (bottleneck round(64 * 32 / 768) = 3:
    # 32*3+3 + 3*32+32 = 227 each) + one w_gate 32 x 22; plus the DDAS autoencoders
    # (code round(100 * 32 / 512) = 6: 32*6+6 + 6*32+32 = 422 each), the zero-shot one + 2 tasks.
    "moe_adapters": 2 * (2 * 227 + 32 * 22) + 3 * 422,
    "lwf_vr": 0,
    # RAIL keeps its regression for inference (fake world: D = 32 features, 3 + 4 classes,
    # 8 training images per class). primal: projection 938 x 32 (hidden = 15000 * 32 / 512)
    # + W 938 x 7; dual: the feature memory 56 x 32 + alpha 56 x 7.
    "rail_dual": 56 * 32 + 56 * 7,
    "rail_primal": 938 * 32 + 938 * 7,
    "resora": 0,
    "wiseft": 0,
    "zeroshot": 0,
    "zscl": 0,
}

# Settings that keep a learner's run tiny (it must still run with its defaults otherwise).
FAST_OVERRIDES: dict[str, dict[str, str]] = {
    "zscl": {"reference_images": "16", "reference_captions": "8"},
    "moe_adapters": {"reference_images": "16"},
}

ITERATIONS = 2
TASKS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def _registered_by_a_test(target: str) -> bool:
    """Learners that test modules register for their own purposes (test_eval_cache's
    `test_vision_only`) are not part of the product and are left out."""
    module = sys.modules.get(target.partition(":")[0])
    path = getattr(module, "__file__", None)
    return path is not None and Path(path).resolve().parent == TESTS_DIR


LEARNER_NAMES = sorted(
    name for name, target in available_learners().items() if not _registered_by_a_test(target)
)


def _parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())


def _same(a: Any, b: Any, where: str = "state") -> None:
    """a and b are the same state: equal tensors (dtype, shape, values), equal plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{where}: tensor became {type(b).__name__}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{tuple(a.shape)}"
        assert torch.equal(a.cpu(), b.cpu()), f"{where}: values differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys differ"
        for key in a:
            _same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class ContractTrainer(Trainer):
    """The engine's trainer, checking the learner's declaration around each task's steps."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tasks: list[dict[str, Any]] = []  # one entry per task, what was found
        self.before_begin_task: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}

    def begin(self, learner: Learner, task: Task) -> TaskTraining | None:
        training = super().begin(learner, task)
        declared = list(training.params) if training is not None else []
        who = f"{learner.name}, task {task.index + 1}"
        if training is not None and training.optimizer is not None:
            settings = learner.optimizer_config(task)
            assert isinstance(settings, OptimizerConfig), who
            assert settings.lr is not None and settings.lr > 0, f"{who}: lr {settings.lr}"
            assert training.settings is not None and training.settings.lr == settings.lr, who
        ids = {id(p) for p in declared}
        snapshot = {n: (p, p.detach().clone()) for n, p in _parameters(learner.model).items()}
        self.tasks.append(
            {"task": task, "declared": ids, "declared_numel": sum(p.numel() for p in declared),
             "snapshot": snapshot, "changed": None, "log": None}
        )  # fmt: skip
        if training is not None:
            self._check_frozen(learner, ids, f"{who}, after Trainer.begin")
        return training

    def _check_frozen(self, learner: Learner, declared: set[int], where: str) -> None:
        loose = [n for n, p in _parameters(learner.model).items() if id(p) not in declared]
        trains = [n for n in loose if _parameters(learner.model)[n].requires_grad]
        assert not trains, f"{where}: not declared trainable but requires_grad: {trains[:5]}"

    def train(self, learner: Learner, run: TaskTraining, train: Any, normalize: Any, seed: int,
              log: list[dict[str, Any]], *args: Any, **kwargs: Any) -> None:  # fmt: skip
        entry = self.tasks[-1]
        who = f"{learner.name}, task {run.task.index + 1}"
        start = len(log)
        super().train(learner, run, train, normalize, seed, log, *args, **kwargs)
        entry["log"] = log[start:]
        # After the steps, before end_task (merges legitimately write base weights there).
        self._check_frozen(learner, entry["declared"], f"{who}, after the steps")
        changed = {}
        for name, p in _parameters(learner.model).items():
            old = entry["snapshot"].get(name)
            if old is None or old[0] is not p or not torch.equal(old[1], p.detach()):
                changed[name] = p
        # begin_task included: a parameter that existed before it (LoRA wraps base modules, so
        # their tensors move to other names, the same tensor objects) changed only if declared
        by_id = {id(p): n for n, p in _parameters(learner.model).items()}
        for key, (p, value) in self.before_begin_task.items():
            if key in by_id and not torch.equal(value, p.detach()):
                changed.setdefault(by_id[key], p)
        entry["changed"] = changed
        undeclared = sorted(n for n, p in changed.items() if id(p) not in entry["declared"])
        assert not undeclared, f"{who}: changed without being declared trainable: {undeclared}"


class ContractEngine(Engine):
    """`Engine` with the checking trainer in its parts; the model is snapshotted when each
    task is made, just before `learner.begin_task`."""

    def make_task(self, t: int, parts: RunParts, train: Any) -> Task:
        self.contract.before_begin_task = {
            id(p): (p, p.detach().clone()) for p in parts.learner.model.parameters()
        }
        return super().make_task(t, parts, train)

    def prepare(self) -> RunParts:
        parts = super().prepare()
        parts.trainer = ContractTrainer(
            self.device, self.cfg.precision, self.dist, self.cfg.log_every
        )
        self.contract = parts.trainer
        return parts


def _config(name: str, out: Path) -> RunConfig:
    return RunConfig(
        setting="xtail",
        learner=name,
        iterations=ITERATIONS,
        batch_size=8,
        seed=0,
        max_tasks=TASKS,
        eval_limit=6,
        log_every=1,
        out=str(out),
        overrides=dict(FAST_OVERRIDES.get(name, {})),
    )


def _fresh(engine: Engine) -> Learner:
    """A new instance of the run's learner, built the way the engine builds it."""
    backbone = engine.world.backbone(engine.device)
    cfg = build_config(engine.learner_cls, engine.cfg.overrides)
    return engine.learner_cls(backbone, cfg, engine.make_context(backbone))


def _assert_loads_to_the_same_model(engine: Engine, state: dict[str, Any], via: str) -> None:
    fresh = _fresh(engine)
    fresh.load_state_dict(state)
    mine, theirs = _parameters(engine.learner.model), _parameters(fresh.model)
    # by name: a learner may register parameters in another order than a fresh one
    assert sorted(mine) == sorted(theirs), f"{via}: parameter names differ"
    for n, p in mine.items():
        assert p.dtype == theirs[n].dtype and torch.equal(p, theirs[n]), f"{via}: {n} differs"
    _same(engine.learner.state_dict(), fresh.state_dict(), f"{via}: state")


def test_the_parametrization_covers_builtins_and_baselines():
    builtins = {"zeroshot", "lora", "drslora", "gated_lora", "resora", "clip_ast"}
    baselines = {"finetune", "lwf", "wiseft", "zscl", "rail_primal", "rail_dual", "joint"}
    baselines |= {"individual", "icarl", "lwf_vr"}
    baselines |= {"moe_adapters"}
    assert builtins | baselines <= set(LEARNER_NAMES)


@pytest.mark.parametrize("name", LEARNER_NAMES)
def test_learner_keeps_the_contract(name, tmp_path, fake_base_model):
    engine = ContractEngine(_config(name, tmp_path / "run"), world=FakeWorld())
    outcome = engine.run()
    assert outcome.manifest["status"] == "finished"
    learner = engine.learner
    tasks = engine.contract.tasks
    assert len(tasks) == TASKS

    trains = engine.learner_cls.uses_training_budget
    for t, entry in enumerate(tasks, start=1):
        # trainable() is empty exactly for the learners that use no training budget
        assert (entry["declared_numel"] > 0) is trains, f"{name} task {t}: trainable()"
        assert outcome.manifest["tasks"][t - 1]["trainable_parameters"] == entry["declared_numel"]
        if not trains:
            assert entry["log"] is None  # no steps ran
            continue
        # every logged scalar is finite, every step logged (log_every=1)
        assert [e["step"] for e in entry["log"]] == list(range(1, ITERATIONS + 1))
        for e in entry["log"]:
            bad = {k: v for k, v in e.items() if not math.isfinite(float(v))}
            assert not bad, f"{name} task {t}: non-finite scalars {bad}"
        # the check above was not vacuous: the task did train something
        assert entry["changed"], f"{name} task {t}: no parameter changed in {ITERATIONS} steps"
    if not trains:  # zeroshot, rail_*: the model never moves
        base = _parameters(fake_base_model)
        for n, p in learner.model.named_parameters():
            assert torch.equal(p, base[n]), n

    # the extra inference parameters are what the learner declares
    base_numel = sum(p.numel() for p in fake_base_model.parameters())
    extra = learner.inference_parameters() - base_numel
    assert extra == EXTRA_INFERENCE_PARAMETERS.get(name, 0), f"{name}: {extra} extra parameters"
    assert outcome.manifest["extra_inference_parameters"] == extra

    # state_dict round-trips through the checkpoint format into a fresh instance
    state = learner.state_dict()
    save_checkpoint(tmp_path / "ckpt", state, TASKS, "contract")
    loaded, completed, config_hash, _ = load_checkpoint(tmp_path / "ckpt")
    assert (completed, config_hash) == (TASKS, "contract")
    _same(state, loaded, "save/load_checkpoint")
    _assert_loads_to_the_same_model(engine, loaded, "load_state_dict")
    saved, completed, _, _ = engine.directory.load_checkpoint()  # the run's own, after task 2
    assert completed == TASKS
    _same(state, saved, "the run's checkpoint")


class WritesUndeclared(Learner):
    """Declares the vision tower, but its after_step also moves the (undeclared) logit scale."""

    @dataclass
    class Config(OptimizerConfig):
        lr: float = 1e-3

    def trainable(self, task: Task) -> list[torch.nn.Parameter]:
        return list(self.model.visual.parameters())

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = clip_logits(self.model, batch.images, batch.text_tokens)
        return contrastive_loss(logits, batch.labels), {}

    def after_step(self, step: StepInfo) -> None:
        with torch.no_grad():
            self.model.logit_scale.add_(0.01)


def test_the_contract_check_catches_a_write_to_an_undeclared_parameter(tmp_path):
    cfg = _config(f"{__name__}:WritesUndeclared", tmp_path / "run")
    with pytest.raises(
        AssertionError, match=r"without being declared trainable: \['logit_scale'\]"
    ):
        ContractEngine(cfg, world=FakeWorld()).run()
