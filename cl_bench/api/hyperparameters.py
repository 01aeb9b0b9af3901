"""A learner's hyperparameters: its `Config` dataclass, filled from ``--set key=value``."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from cl_bench.api.learner import Learner
from cl_bench.errors import UserError

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
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):  # an instance, not a class
        return dataclasses.asdict(cfg)
    return {}
