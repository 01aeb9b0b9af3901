"""The resolved configuration of one run, from CLI flags or a TOML file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_bench.errors import UserError

WORLDS = ("toy", "real")
DEVICES = ("cpu", "cuda")


@dataclass
class RunConfig:
    setting: str = "xtail"
    learner: str = "zeroshot"  # registry name, module:Class or file.py:Class
    world: str = "toy"
    order: str | None = None  # MTIL order I / II (None = the setting's first)
    shots: int | None = None  # None = the setting's default; 0 = all images
    iterations: int | None = None  # per task; None = the setting's budget for the world
    batch_size: int | None = None
    seed: int = 0
    out: str | None = None
    resume: bool = False
    force: bool = False  # resume despite a differing config / overwrite a finished run
    overrides: dict[str, str] = field(default_factory=dict)  # --set key=value (learner Config)
    device: str = "cpu"
    model: str | None = None  # real world: open_clip model name (default ViT-B-16)
    pretrained: str | None = None  # real world: weights tag (default openai)
    data_root: str | None = None  # real world: where datasets live
    split_dir: str | None = None  # real world: CoOp-style split JSON files to use
    reference_images: str | None = None  # real world: reference image folder (ZSCL)
    reference_captions: str | None = None  # real world: reference caption list file (ZSCL)
    eval_batch_size: int = 256
    eval_limit: int | None = None  # at most this many test images per dataset (quick looks, tests)
    max_tasks: int | None = None  # only the first N tasks of the stream (quick looks, tests)
    log_every: int = 10
    precision: str = (
        "fp32"  # fp32 | bf16 | fp16: autocast compute dtype (cl_bench.engine.precision)
    )
    threads: int | None = None  # torch CPU threads (None = torch's default: all cores)

    def validate(self) -> None:
        if self.world not in WORLDS:
            raise UserError(f"unknown world {self.world!r}; valid worlds: {', '.join(WORLDS)}")
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; valid devices: {', '.join(DEVICES)}")
        for name in (
            "iterations",
            "batch_size",
            "eval_batch_size",
            "eval_limit",
            "max_tasks",
            "log_every",
            "threads",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} must be a positive integer, got {value}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        from cl_bench.engine.precision import check_precision

        check_precision(self.precision, self.device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The keys that define the numbers (resume refuses when these differ)."""
        skip = {"out", "resume", "force", "device", "eval_batch_size", "log_every", "threads"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_config_file(path: Path) -> dict[str, Any]:
    """A TOML run config: top-level keys are RunConfig fields; a [set] table holds overrides."""
    from cl_bench.engine.settings import read_toml

    raw = read_toml(Path(path))
    valid = {f.name for f in dataclasses.fields(RunConfig)} - {"overrides"}
    overrides = raw.pop("set", {})
    unknown = set(raw) - valid
    if unknown:
        raise UserError(
            f"{path}: unknown keys {sorted(unknown)}; valid keys: {', '.join(sorted(valid))} and a [set] table"
        )
    if not isinstance(overrides, dict):
        raise UserError(f"{path}: 'set' must be a table of learner hyperparameters")
    hints = typing.get_type_hints(RunConfig)
    for key, value in raw.items():
        _check_type(path, key, value, hints[key])
    raw["overrides"] = {k: _override_text(v) for k, v in overrides.items()}
    return raw


def _check_type(path: Path, key: str, value: Any, hint: Any) -> None:
    """TOML values arrive typed; a wrong type is an error here, not a crash later."""
    allowed = tuple(a for a in typing.get_args(hint) if a is not type(None)) or (hint,)
    if value is None or (isinstance(value, allowed) and not _is_bool_for_int(value, allowed)):
        return
    expected = " or ".join(a.__name__ for a in allowed)
    raise UserError(
        f"{path}: {key} must be {expected}, got {type(value).__name__} {value!r}; fix the value"
    )


def _is_bool_for_int(value: Any, allowed: tuple[type, ...]) -> bool:
    return isinstance(value, bool) and bool not in allowed


def _override_text(value: Any) -> str:
    """A [set] value in the --set text form (lists -> comma-separated, booleans -> true/false)."""
    if isinstance(value, list):
        return ",".join(_override_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
