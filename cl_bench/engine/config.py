"""The resolved configuration of one run, from CLI flags or a TOML file.

`RunConfig` is the one definition of a run option: each field carries its CLI flag, help
text and help group (`option(...)`). The `clbench run` / `sweep` / `bench` options
(cl_bench.cli.app), the sweep's `run_args` (a config back to CLI arguments), the TOML
loader and the option reference (`python -m cl_bench.engine.config`) are derived from it.
This module imports no CLI library, so the table serves a Python API as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_bench.data.toy.model import DEFAULT_TOY_MODEL, TOY_MODELS
from cl_bench.errors import UserError

DEVICES = ("auto", "cpu", "cuda")  # auto: CUDA when available, else CPU (resolve_device)
TRACKERS = ("tensorboard", "wandb")  # --log (cl_bench.engine.trackers)
NO_HOLDOUT = "none"  # --holdout none: no hold-out datasets

# Help groups, in the order `--help` shows them.
PROTOCOL, LEARNER, RUN, COMPUTE, QUICK, REAL, INTERNAL = (
    "Protocol",
    "Learner",
    "Run",
    "Compute",
    "Quick looks",
    "Real world",
    "Internal",
)
GROUPS = (PROTOCOL, LEARNER, RUN, COMPUTE, QUICK, REAL, INTERNAL)


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    group: str,
    flag: str | None = None,
    cli: bool = True,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A RunConfig field with its CLI metadata. `flag` defaults to --field-name; `cli=False`
    fields are TOML-only (no flag)."""
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}; valid: {', '.join(GROUPS)}")
    metadata = {"help": help, "group": group, "flag": flag, "cli": cli}
    return field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass
class RunConfig:
    setting: str = option(
        "xtail", group=PROTOCOL, help="Protocol: xtail or mtil (tasks/settings/*.toml)."
    )
    learner: str = option(
        "zeroshot", group=LEARNER, help="Learner name, package.module:Class or file.py:Class."
    )
    world: str = option("toy", group=PROTOCOL, help="Data world: toy (embedded, default) or real.")
    toy_model: str = option(
        DEFAULT_TOY_MODEL,
        group=PROTOCOL,
        help="Toy world: the toy CLIP, small (shipped, default) or base (4x the step FLOPs; "
        "`clbench toy pretrain --model base` writes its weights to the cache).",
    )
    order: str | None = option(None, group=PROTOCOL, help="Task order (MTIL: I or II).")
    shots: int | None = option(
        None, group=PROTOCOL, help="Images per class for training (0 = all)."
    )
    iterations: int | None = option(
        None, group=PROTOCOL, help="Override the per-task iteration count."
    )
    batch_size: int | None = option(None, group=PROTOCOL, help="Override the training batch size.")
    holdout: str | None = option(
        None,
        group=PROTOCOL,
        help="Hold-out datasets: none, or NAME,... (default: the setting's list).",
    )
    augment: str = option(
        "auto",
        group=PROTOCOL,
        help="Training augmentation: rrc (RandomResizedCrop, scale 0.9-1.0, as the references), "
        "none, or auto (the world's default_augment; the real world's is rrc).",
    )
    union_classifier: str | None = option(
        None,
        group=PROTOCOL,
        help="Task-agnostic settings: codyra (each dataset's first template, default) or rail "
        "('a photo of a {}.'); one prompt per class.",
    )
    seed: int = option(0, group=RUN, help="Seed for initialisation, batch order, augmentation.")
    out: str | None = option(
        None,
        group=RUN,
        help="Run directory (default results/runs/<world>-<setting>-<learner>-seed<S>).",
    )
    resume: bool = option(
        False, group=RUN, help="Continue an interrupted run from its last completed task."
    )
    force: bool = option(
        False, group=RUN, help="Overwrite a finished run / resume despite a changed config."
    )
    overrides: dict[str, str] = option(
        default_factory=dict,
        group=LEARNER,
        flag="--set",
        help="Learner hyperparameter KEY=VALUE (repeatable; a sweep gives it to every learner).",
    )
    device: str = option(
        "auto", group=COMPUTE, help="auto (CUDA when available, else CPU), cpu or cuda."
    )
    model: str | None = option(
        None, group=REAL, help="Real world: open_clip model name (default ViT-B-16)."
    )
    pretrained: str | None = option(
        None, group=REAL, help="Real world: open_clip weights tag (default openai)."
    )
    data_root: str | None = option(
        None, group=REAL, help="Real world: directory holding the datasets."
    )
    split_dir: str | None = option(
        None, group=REAL, help="Real world: directory of CoOp-style split JSON files."
    )
    reference_images: str | None = option(
        None, group=REAL, help="Real world: reference image folder for ZSCL."
    )
    reference_captions: str | None = option(
        None, group=REAL, help="Real world: reference caption list (one per line) for ZSCL."
    )
    eval_batch_size: int = option(
        256, group=INTERNAL, cli=False, help="Images per evaluation batch (TOML only)."
    )
    eval_limit: int | None = option(
        None, group=QUICK, help="At most N test images per dataset (quick looks, tests)."
    )
    max_tasks: int | None = option(
        None, group=QUICK, help="Only the first N tasks of the stream (quick looks, tests)."
    )
    log_every: int = option(
        10, group=INTERNAL, cli=False, help="Steps between logged training scalars (TOML only)."
    )
    precision: str = option(
        "fp32",
        group=COMPUTE,
        help="fp32, bf16 or fp16 (autocast, fp32 master weights; fp16 CUDA only).",
    )
    threads: int | None = option(
        None,
        group=COMPUTE,
        help="torch CPU threads per run (default: all cores, or cores // --jobs in a sweep "
        "with --jobs > 1; 1 is faster on a busy machine).",
    )
    log: list[str] = option(
        default_factory=list,
        group=RUN,
        help="Experiment tracker: tensorboard or wandb (repeatable; never changes a result).",
    )

    def validate(self) -> None:
        from cl_bench.data.worlds import WORLDS

        WORLDS.check(self.world)
        if self.toy_model not in TOY_MODELS:
            raise UserError(
                f"unknown --toy-model {self.toy_model!r}; valid: {', '.join(TOY_MODELS)}"
            )
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; valid devices: {', '.join(DEVICES)}")
        parse_holdout(self.holdout)
        for name in self.log:
            if name not in TRACKERS:
                raise UserError(f"unknown --log {name!r}; valid trackers: {', '.join(TRACKERS)}")
        if len(set(self.log)) != len(self.log):
            raise UserError(f"--log lists a tracker twice ({', '.join(self.log)}); give each once")
        for name in POSITIVE:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{flag_of(name)} must be a positive integer, got {value}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        from cl_bench.engine.precision import check_precision

        # auto is resolved where the run starts (a sweep host may have no GPU; its nodes may)
        check_precision(self.precision, "cuda" if self.device == "auto" else self.device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self, complete: bool = False) -> dict[str, Any]:
        """The keys that define the numbers (resume refuses when these differ). Fields added
        after run directories existed are left out at their default (unless `complete`), so
        those runs keep their config hash (resume, a sweep's skip)."""
        values = self.to_dict()
        values["holdout"] = canonical_holdout(self.holdout)
        defaults = {o.name: o.default for o in run_options()}
        return {
            k: v
            for k, v in values.items()
            if k not in NOT_IDENTITY
            and (complete or not (k in OMITTED_AT_DEFAULT and v == defaults[k]))
        }

    def hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Options that change no number of a run: not part of its identity or config hash.
NOT_IDENTITY = frozenset(
    {"out", "resume", "force", "device", "eval_batch_size", "log_every", "threads", "log"}
)
# Fields added after run directories existed: left out of the identity at their default
# value, so older runs keep their config hash (RunConfig.identity).
OMITTED_AT_DEFAULT = frozenset({"holdout"})


def identity_diff(old_config: dict[str, Any], new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Identity keys whose value differs between a run's stored config (manifest.json's
    `config`) and `new`: key -> (old, new). A key the stored config lacks had its default
    (runs made before a RunConfig field existed stay comparable)."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    try:
        old = RunConfig(**{k: v for k, v in old_config.items() if k in names}).identity(True)
    except (TypeError, UserError):  # a stored value this version cannot read: compare raw
        old = {k: old_config.get(k) for k in new.identity(True)}
    return {k: (old.get(k), v) for k, v in new.identity(True).items() if old.get(k) != v}


def resolve_device(device: str) -> str:
    """--device as the run uses it: auto -> cuda when torch sees a CUDA device, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_holdout(text: str | None) -> tuple[str, ...] | None:
    """--holdout: None (the setting's list), () for `none`, or the named datasets (each a
    dataset file in tasks/datasets/, listed once)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if [n.lower() for n in names] == [NO_HOLDOUT]:
        return ()
    from cl_bench.engine.settings import tasks_dir

    known = sorted(p.stem for p in (tasks_dir() / "datasets").glob("*.toml"))
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        what = f"unknown dataset(s) {', '.join(unknown)}" if unknown else "no dataset"
        raise UserError(
            f"--holdout {text!r}: {what}; give none or a comma-separated list of: {', '.join(known)}"
        )
    if len(set(names)) != len(names):
        raise UserError(f"--holdout {text!r} lists a dataset twice; give each once")
    return tuple(names)


def canonical_holdout(text: str | None) -> str | None:
    """--holdout as compared between runs: None, 'none' or NAME,NAME (order kept)."""
    names = parse_holdout(text)
    if names is None:
        return None
    return ",".join(names) if names else NO_HOLDOUT


def holdout_of(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """The hold-out datasets of a run: the setting's `default` unless --holdout names others."""
    names = parse_holdout(text)
    return default if names is None else names


POSITIVE = (  # integer options that must be > 0 when given
    "iterations",
    "batch_size",
    "eval_batch_size",
    "eval_limit",
    "max_tasks",
    "log_every",
    "threads",
)
SET_KEY = "set"  # the TOML table (and --set) that holds `overrides`


# ------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class RunOption:
    """One RunConfig field as an option: how it is spelt on the CLI and in a TOML file."""

    name: str  # the RunConfig field
    flag: str  # --batch-size; --set for overrides
    help: str
    group: str
    cli: bool  # False: TOML only
    type: Any  # the field's type hint
    default: Any  # the default value (a fresh {} for overrides)

    @property
    def toml_key(self) -> str:
        return SET_KEY if self.name == "overrides" else self.name

    @property
    def is_flag(self) -> bool:
        return self.type is bool


def run_options() -> list[RunOption]:
    """Every RunConfig field, in field order, with its option metadata."""
    hints = typing.get_type_hints(RunConfig)
    out = []
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        if "help" not in meta:
            raise TypeError(f"RunConfig.{f.name} is not declared with option(...)")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"RunConfig.{f.name} has no default")
        out.append(
            RunOption(
                name=f.name,
                flag=meta["flag"] or "--" + f.name.replace("_", "-"),
                help=meta["help"],
                group=meta["group"],
                cli=meta["cli"],
                type=hints[f.name],
                default=default,
            )
        )
    return out


def cli_options() -> list[RunOption]:
    """The RunConfig fields that are command-line options."""
    return [o for o in run_options() if o.cli]


def flag_of(name: str) -> str:
    return next(o.flag for o in run_options() if o.name == name)


def parse_sets(values: list[str]) -> dict[str, str]:
    """--set KEY=VALUE items -> overrides."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=1e-4")
        out[key.strip()] = value.strip()
    return out


def from_cli(name: str, value: Any) -> Any:
    """A parsed CLI value -> the RunConfig field's value (--set items -> overrides)."""
    if name == "overrides":
        return parse_sets(value or [])
    if _is_list(_hint_of(name)):
        return list(value or [])
    return value


def _hint_of(name: str) -> Any:
    return typing.get_type_hints(RunConfig)[name]


def _is_list(hint: Any) -> bool:
    return typing.get_origin(hint) is list


def config_args(cfg: RunConfig, names: typing.Iterable[str] | None = None) -> list[str]:
    """The CLI options that reproduce cfg: every CLI field that is set (or those of `names`);
    see `cl_bench.sweep.commands.run_args`."""
    wanted = None if names is None else set(names)
    args: list[str] = []
    for opt in cli_options():
        if wanted is not None and opt.name not in wanted:
            continue
        value = getattr(cfg, opt.name)
        if opt.is_flag:
            if value != opt.default:
                args.append(opt.flag if value else "--no-" + opt.flag[2:])
        elif opt.name == "overrides":
            for key in sorted(value):
                args += [opt.flag, f"{key}={value[key]}"]
        elif _is_list(opt.type):  # repeatable: --log a --log b
            for item in value:
                args += [opt.flag, str(item)]
        elif value is not None:
            args += [opt.flag, str(value)]
    not_cli = [o.name for o in run_options() if not o.cli and getattr(cfg, o.name) != o.default]
    if not_cli:
        raise UserError(
            f"{', '.join(not_cli)} {'has' if len(not_cli) == 1 else 'have'} no command-line "
            "option; set it in a --config file"
        )
    return args


def options_markdown() -> str:
    """The run options as a markdown reference (what `python -m cl_bench.engine.config` prints)."""
    lines = []
    for group in GROUPS:
        opts = [o for o in run_options() if o.group == group]
        if not opts:
            continue
        lines += [
            f"### {group}",
            "",
            "| flag | TOML key | default | meaning |",
            "|---|---|---|---|",
        ]
        for o in opts:
            flag = f"`{o.flag}`" if o.cli else "—"
            key = f"`[{o.toml_key}]` table" if o.name == "overrides" else f"`{o.toml_key}`"
            default = "—" if o.default in (None, {}, []) else f"`{o.default!r}`"
            lines.append(f"| {flag} | {key} | {default} | {o.help} |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ TOML
def load_config_file(path: Path) -> dict[str, Any]:
    """A TOML run config: top-level keys are RunConfig fields; a [set] table holds overrides."""
    from cl_bench.engine.settings import read_toml

    raw = read_toml(Path(path))
    options = {o.toml_key: o for o in run_options()}
    valid = set(options) - {SET_KEY}
    overrides = raw.pop(SET_KEY, {})
    unknown = set(raw) - valid
    if unknown:
        raise UserError(
            f"{path}: unknown keys {sorted(unknown)}; valid keys: {', '.join(sorted(valid))} and a [set] table"
        )
    if not isinstance(overrides, dict):
        raise UserError(f"{path}: 'set' must be a table of learner hyperparameters")
    values = {}
    for key, value in raw.items():
        _check_type(path, key, value, options[key].type)
        values[options[key].name] = value
    values[options[SET_KEY].name] = {k: _override_text(v) for k, v in overrides.items()}
    return values


def _check_type(path: Path, key: str, value: Any, hint: Any) -> None:
    """TOML values arrive typed; a wrong type is an error here, not a crash later."""
    if _is_list(hint):
        (item,) = typing.get_args(hint)
        if isinstance(value, list) and all(isinstance(v, item) for v in value):
            return
        raise UserError(
            f'{path}: {key} must be a list of {item.__name__}, got {value!r}; e.g. {key} = ["a"]'
        )
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


if __name__ == "__main__":  # the option reference for the docs
    print(options_markdown())
