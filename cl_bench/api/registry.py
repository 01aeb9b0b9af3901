"""Name -> class registries, loaded lazily on lookup (lm-evaluation-harness style).

One small `Registry` serves learners (here), data worlds (`cl_bench.data.worlds`) and sweep
executors (`cl_bench.sweep.executors`). A registry knows

- targets ``package.module:Attr`` by name, imported only when that name is looked up;
- classes registered by decorator (`registry.register(name)`), checked against a base class;
- optionally an entry-point group, read again inside every lookup (plug-ins installed while a
  process runs are found; nothing has to be initialised first).

A name given twice (two targets, or a class and a target that differ) is an error naming
both; an unknown name lists the close matches and the valid names; a target that fails to
import is a `UserError` naming it. Learners also accept ``module:Class`` and
``path/to/file.py:Class`` targets in place of a name (`get_learner`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from cl_bench.api.learner import Learner
from cl_bench.errors import UserError

T = TypeVar("T")


def qualname(obj: Any) -> str:
    """'module:Qualname' of a class (how a registered class is listed, and compared)."""
    return f"{obj.__module__}:{obj.__qualname__}"


class Registry(Generic[T]):
    """Names -> lazily imported targets and decorator-registered classes.

    kind: what the entries are, for messages ("learner", "world").
    base: registered and loaded classes must subclass it (None: anything goes).
    base_hint: what to inherit from, for the message (default: the base's module:name).
    targets: built-in entries, name -> "module:Attr".
    entry_point_group: installed plug-ins, name -> "module:Attr", read on every lookup.
    flag: the CLI option that names an entry (for messages; default --<kind>).
    decorator: how the decorator is spelt in messages (default <kind>s.register).
    unknown / hint: the unknown-name message; fields {kind} {name} {flag} {valid} {hint}, and
        {close} in `hint`, which is "" when nothing is close.
    sort: list names alphabetically; False keeps the built-ins' order, then plug-ins by
        name, then registered classes in registration order.
    """

    def __init__(
        self,
        kind: str,
        *,
        base: type | None = None,
        base_hint: str | None = None,
        targets: dict[str, str] | None = None,
        entry_point_group: str | None = None,
        flag: str | None = None,
        decorator: str | None = None,
        unknown: str = "unknown {kind} {name!r}.{hint} Valid: {valid}",
        hint: str = " Did you mean {close}?",
        sort: bool = True,
    ) -> None:
        self.kind = kind
        self.base = base
        self.base_hint = base_hint or (qualname(base).replace(":", ".") if base else "")
        self.flag = flag or f"--{kind}"
        self.decorator = decorator or f"{kind}s.register"
        self.entry_point_group = entry_point_group
        self.unknown, self.hint, self.sort = unknown, hint, sort
        self._targets: dict[str, str] = {}
        self._classes: dict[str, type[T]] = {}
        for name, target in (targets or {}).items():
            self.add(name, target)

    # ------------------------------------------------------------------ registering
    def add(self, name: str, target: str) -> None:
        """A lazy entry: `target` ("module:Attr") is imported when `name` is looked up."""
        self._check_target_form(target)
        old = self._targets.get(name)
        if old is not None and old != target:
            raise UserError(f"{self.kind} {name!r} is registered twice ({old} and {target})")
        self._targets[name] = target

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: register the class under `name` (and set its `name`)."""

        def decorate(cls: type) -> type:
            if not self._is_valid(cls):
                raise UserError(
                    f"@{self.decorator}({name!r}) decorates {cls!r}, which is not a "
                    f"{self.base.__name__} subclass; inherit from {self.base_hint}"  # type: ignore[union-attr]
                )
            existing = self._classes.get(name)
            if existing is not None and qualname(existing) != qualname(cls):
                raise UserError(
                    f"{self.kind} name {name!r} is registered twice "
                    f"({qualname(existing)} and {qualname(cls)}); rename one"
                )
            if self.base is not None:  # registered classes know their name (Learner.name)
                named: Any = cls  # `name` is the base's attribute, which `type` does not declare
                named.name = name
            self._classes[name] = cls
            return cls

        return decorate

    # ------------------------------------------------------------------ looking up
    def targets(self) -> dict[str, str]:
        """name -> 'module:Attr' of every entry, without importing any of them."""
        found = dict(self._targets)
        for name, target in sorted(self._entry_point_targets().items()):
            if name in found and found[name] != target:
                raise UserError(
                    f"{self.kind} {name!r} is provided twice ({found[name]} and {target}); uninstall one"
                )
            found[name] = target
        for name, cls in self._classes.items():
            own = qualname(cls)
            if name in found and found[name] != own:
                raise UserError(
                    f"{self.kind} name {name!r} is registered twice ({found[name]} and {own}); rename one"
                )
            found[name] = own
        return dict(sorted(found.items())) if self.sort else found

    def names(self) -> list[str]:
        return list(self.targets())

    def __contains__(self, name: object) -> bool:
        return name in self.targets()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.targets())

    def check(self, name: str) -> str:
        """`name` itself if it is registered, else the unknown-name UserError."""
        known = self.targets()
        if name not in known:
            raise UserError(self.unknown_message(name, list(known)))
        return name

    def unknown_message(self, name: str, valid: list[str] | None = None) -> str:
        valid = self.names() if valid is None else valid
        close = difflib.get_close_matches(name, valid, n=3)
        hint = self.hint.format(close=", ".join(close)) if close else ""
        return self.unknown.format(
            kind=self.kind, name=name, flag=self.flag, valid=", ".join(valid), hint=hint
        )

    def get(self, name: str) -> type[T]:
        """The class registered under `name`, imported on first use."""
        known = self.targets()
        if name in self._classes:
            return self._classes[name]
        if name not in known:
            raise UserError(self.unknown_message(name, list(known)))
        if name in self._targets:
            return self.load(known[name])
        try:  # an installed plug-in: a broken one names its package
            return self.load(known[name])
        except UserError as exc:
            dist = self._entry_point_dist(name)
            raise UserError(
                f"{self.kind} plug-in {name!r} (entry point {self.entry_point_group} of "
                f"{dist}) is broken: {exc}"
            ) from exc

    def load(self, target: str) -> type[T]:
        """Import 'package.module:Attr' or 'path/to/file.py:Attr' and check it."""
        self._check_target_form(target)
        module_part, _, attr = target.rpartition(":")
        module = self._import(module_part, target)
        obj = getattr(module, attr, None)
        if obj is None:
            raise UserError(
                f"{module_part!r} has no attribute {attr!r}; check the class name in {target!r}"
            )
        if not self._is_valid(obj):
            raise UserError(
                f"{target!r} is not a {self.base.__name__} subclass; inherit from {self.base_hint}"  # type: ignore[union-attr]
            )
        return cast("type[T]", obj)  # checked against the base just above

    # ------------------------------------------------------------------ internals
    def _is_valid(self, obj: Any) -> bool:
        return self.base is None or (isinstance(obj, type) and issubclass(obj, self.base))

    def _check_target_form(self, target: str) -> None:
        module_part, _, attr = target.rpartition(":")
        if not module_part or not attr:
            raise UserError(
                f"{self.kind} target {target!r} is not of the form module:Class or file.py:Class"
            )

    def _entry_point_targets(self) -> dict[str, str]:
        if not self.entry_point_group:
            return {}
        return {ep.name: ep.value for ep in entry_points(group=self.entry_point_group)}

    def _entry_point_dist(self, name: str) -> str:
        for ep in entry_points(group=self.entry_point_group or ""):
            if ep.name == name:
                return getattr(ep.dist, "name", None) or "an unknown package"
        return "an unknown package"

    def _import(self, module_part: str, target: str) -> Any:
        try:
            if module_part.endswith(".py"):
                return _import_file(Path(module_part), target, self.kind)
            return importlib.import_module(module_part)
        except UserError:
            raise
        except Exception as exc:  # the plug-in failed: name it, keep the cause
            raise UserError(
                f"{self.kind} module {module_part!r} failed to import: {type(exc).__name__}: "
                f"{exc}; fix the module or the {self.flag} target"
            ) from exc


def _import_file(path: Path, target: str, kind: str) -> Any:
    if not path.is_file():
        raise UserError(f"{kind} file {path} does not exist; check the path in {target!r}")
    mod_name = f"cl_bench_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import {path}; is it a Python file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ learners
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

LEARNERS: Registry[Learner] = Registry(
    "learner",
    base=Learner,
    base_hint="cl_bench.Learner",
    targets=BUILTIN_LEARNERS,
    entry_point_group=ENTRY_POINT_GROUP,
    decorator="register_learner",
    unknown="unknown learner {name!r}.{hint} Valid: {valid} (or module:Class / file.py:Class)",
)


def register_learner(name: str) -> Callable[[type], type]:
    """Class decorator: register a `Learner` subclass under `name`."""
    return LEARNERS.register(name)


def available_learners() -> dict[str, str]:
    """name -> 'module:Class' of every learner known without importing it."""
    return LEARNERS.targets()


# Classes handed to the Python API directly (`cl_bench.run(learner=MyLearner)`), by their
# 'module:QualName' target: the run's config keeps that string, this process keeps the class
# (a class defined in a notebook or a function cannot be imported back from its target).
_DIRECT_LEARNERS: dict[str, type[Learner]] = {}


def learner_target(cls: type[Learner]) -> str:
    """A Learner subclass given directly -> its 'module:QualName' target, which `get_learner`
    resolves to this very class for the rest of the process."""
    if not (isinstance(cls, type) and issubclass(cls, Learner)):
        raise UserError(f"{cls!r} is not a Learner subclass; inherit from cl_bench.Learner")
    target = qualname(cls)
    _DIRECT_LEARNERS[target] = cls  # a class redefined (a notebook cell run again): the newest
    return target


def get_learner(name_or_target: str) -> type[Learner]:
    """Resolve a registered name, or a module/file target, to a Learner class."""
    direct = _DIRECT_LEARNERS.get(name_or_target)
    if direct is not None:
        if not direct.__dict__.get("name"):  # its own name, not one inherited from a built-in
            direct.name = direct.__name__.lower()
        return direct
    if ":" in name_or_target:
        cls = LEARNERS.load(name_or_target)
        if not cls.name:
            cls.name = name_or_target.rpartition(":")[2].lower()
        return cls
    cls = LEARNERS.get(name_or_target)
    if cls.name != name_or_target:
        cls.name = name_or_target
    return cls
