"""The `Learner` API every method implements, and the registry that finds learners.

The engine owns the loop, data, evaluation, seeding, checkpoints and results; a learner
owns its parameters, optimizer, losses and what happens at task boundaries. A custom
learner is one file::

    @register_learner("mylearner")
    class MyLearner(Learner):
        def train_step(self, batch, step): ...

found by name (built-ins, the ``cl_bench.learners`` entry-point group), or by a target
``package.module:Class`` / ``path/to/file.py:Class``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import sys
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cl_bench.errors import UserError

if TYPE_CHECKING:  # heavy imports stay out of `clbench --help`
    import torch
    from torch import nn

    from cl_bench.api.context import RunContext
    from cl_bench.models.backbone import Backbone

ENTRY_POINT_GROUP = "cl_bench.learners"

# Built-in learners, imported lazily on lookup (no import-time side effects).
BUILTIN_LEARNERS: dict[str, str] = {
    "zeroshot": "cl_bench.learners.zeroshot:ZeroShot",
    "lora": "cl_bench.learners.lora:LoRA",
    "drslora": "cl_bench.learners.drslora:DRSLoRA",
    "gated_lora": "cl_bench.learners.gated_lora:GatedLoRA",
    "resora": "cl_bench.learners.resora:ReSoRA",
    "clip_ast": "cl_bench.learners.clip_ast:CLIPAST",
}


@dataclass(frozen=True)
class Task:
    """One step of the stream: a dataset to learn, with its training label space."""

    index: int  # 0-based position in the stream
    name: str  # dataset name, e.g. "aircraft"
    classnames: tuple[str, ...]
    prompts: tuple[str, ...]  # training prompt per class (the dataset's first template)
    text_tokens: torch.Tensor  # tokenized `prompts`, [num_classes, context_length], on device
    iterations: int
    batch_size: int
    num_tasks: int

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


@dataclass
class Batch:
    images: torch.Tensor  # float, normalized, [B, 3, H, W], on device
    labels: torch.Tensor  # int64 in the task's own label space, [B]
    text_tokens: torch.Tensor  # the task's class prompts, [num_classes, context_length]
    task_index: int


@dataclass(frozen=True)
class StepInfo:
    step: int  # 0-based optimizer step within the task
    total_steps: int
    task_index: int
    num_tasks: int

    @property
    def progress(self) -> float:
        """Fraction of the task's steps completed before this one, in [0, 1)."""
        return self.step / max(1, self.total_steps)


class Learner(ABC):
    """Base class of every continual learner.

    Subclasses set `name` (via `@register_learner`), a one-line `description`, and a
    nested `Config` dataclass whose fields are the hyperparameters (settable with
    ``--set key=value``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    trains: ClassVar[bool] = True  # False: the engine skips the training loop (zeroshot)

    @dataclass
    class Config:
        pass

    def __init__(self, backbone: Backbone, cfg: Any, ctx: RunContext) -> None:
        self.backbone = backbone
        self.model: nn.Module = backbone.model
        self.cfg = cfg
        self.ctx = ctx

    def begin_task(self, task: Task) -> None:  # noqa: B027 - optional hook
        """Called before the first step of `task`: build optimizers, adapters, copies."""

    @abstractmethod
    def train_step(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        """One optimizer step; returns scalars to log (plain floats or 0-dim tensors)."""

    def end_task(self, task: Task) -> None:  # noqa: B027 - optional hook
        """Called after the last step of `task`: merge, interpolate, prune."""

    def eval_model(self) -> nn.Module:
        """A CLIP-like module (encode_image, encode_text, logit_scale) with current weights."""
        return self.model

    def trainable_parameter_count(self) -> int:
        """Parameters the learner updates in the current task (for the cost table)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume at a task boundary (tensors or plain values)."""
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Learner]] = {}


def register_learner(name: str):
    """Class decorator: register a `Learner` subclass under `name`."""

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Learner)):
            raise UserError(
                f"@register_learner({name!r}) decorates {cls!r}, which is not a Learner subclass; inherit from cl_bench.Learner"
            )
        existing = _REGISTRY.get(name)
        if existing is not None and _qualname(existing) != _qualname(cls):
            raise UserError(
                f"learner name {name!r} is registered twice ({_qualname(existing)} and {_qualname(cls)}); rename one"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _entry_point_targets() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_learners() -> dict[str, str]:
    """name -> 'module:Class' of every learner known without importing it."""
    found = dict(BUILTIN_LEARNERS)
    for name, target in _entry_point_targets().items():
        if name in found and found[name] != target:
            raise UserError(
                f"learner {name!r} is provided twice ({found[name]} and {target}); uninstall one"
            )
        found[name] = target
    for name, cls in _REGISTRY.items():
        found.setdefault(name, _qualname(cls))
    return dict(sorted(found.items()))


def _load_target(target: str) -> type[Learner]:
    """Load 'package.module:Class' or 'path/to/file.py:Class'."""
    module_part, _, attr = target.rpartition(":")
    if not module_part or not attr:
        raise UserError(
            f"learner target {target!r} is not of the form module:Class or file.py:Class"
        )
    try:
        if module_part.endswith(".py"):
            path = Path(module_part)
            if not path.is_file():
                raise UserError(f"learner file {path} does not exist; check the path in {target!r}")
            mod_name = f"cl_bench_user_{path.stem}_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise UserError(f"cannot import {path}; is it a Python file?")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_part)
    except UserError:
        raise
    except Exception as exc:  # the user's module failed: name it, keep the cause
        raise UserError(
            f"learner module {module_part!r} failed to import: {type(exc).__name__}: {exc}; fix the module or the --learner target"
        ) from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise UserError(
            f"{module_part!r} has no attribute {attr!r}; check the class name in {target!r}"
        )
    if not (isinstance(cls, type) and issubclass(cls, Learner)):
        raise UserError(f"{target!r} is not a Learner subclass; inherit from cl_bench.Learner")
    if not cls.name:
        cls.name = attr.lower()
    return cls


def get_learner(name_or_target: str) -> type[Learner]:
    """Resolve a registered name, or a module/file target, to a Learner class."""
    if ":" in name_or_target:
        return _load_target(name_or_target)
    known = available_learners()
    if name_or_target in _REGISTRY:
        return _REGISTRY[name_or_target]
    if name_or_target not in known:
        close = difflib.get_close_matches(name_or_target, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown learner {name_or_target!r}.{hint} Valid: {', '.join(known)} (or module:Class / file.py:Class)"
        )
    cls = _load_target(known[name_or_target])
    if cls.name != name_or_target:
        cls.name = name_or_target
    return cls


# ---------------------------------------------------------------------------------------
# Config from --set overrides
# ---------------------------------------------------------------------------------------


def _convert(value: str, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        typ = args[0] if len(args) == 1 else str
        origin = typing.get_origin(typ)
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise UserError(f"--set {key}={value}: must be one of {', '.join(map(str, choices))}")
        return value
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(typ) or (str,)
        items = [_convert(v.strip(), inner, key) for v in value.split(",") if v.strip()]
        return tuple(items) if origin is tuple else items
    if typ is bool:
        low = value.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise UserError(f"--set {key}={value}: expected a boolean (true/false)")
    if typ in (int, float, str):
        try:
            return typ(value)
        except ValueError:
            raise UserError(f"--set {key}={value}: expected {typ.__name__}") from None
    raise UserError(f"--set {key}: field type {typ!r} cannot be set from the command line")


def build_config(learner_cls: type[Learner], overrides: dict[str, str]) -> Any:
    """The learner's Config with `overrides` (strings from --set) converted to field types."""
    cfg_cls = learner_cls.Config
    hints = typing.get_type_hints(cfg_cls)
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in fields:
            valid = ", ".join(fields) or "(none: this learner has no hyperparameters)"
            raise UserError(
                f"--set {key}: {learner_cls.name} has no such hyperparameter. Valid keys: {valid}"
            )
        values[key] = _convert(str(raw), hints[key], key)
    try:
        return cfg_cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid hyperparameters for {learner_cls.name}: {exc}") from None


def config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
