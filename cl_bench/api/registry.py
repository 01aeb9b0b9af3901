"""The learner registry: built-ins, the `cl_bench.learners` entry-point group, and targets
``package.module:Class`` / ``path/to/file.py:Class``, loaded lazily on lookup."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from cl_bench.api.learner import Learner
from cl_bench.errors import UserError

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
