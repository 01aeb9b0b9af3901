"""Task files: the `tasks/` folder, its TOML readers, and the settings in `tasks/settings/`.

Settings (protocols) are versioned data in `tasks/settings/*.toml`, dataset specs in
`tasks/datasets/*.toml` (read by `cl_bench.data.real.spec`). Unknown or missing keys are
errors: in a benchmark a typo must not become a silent default. This module sits on the data
layer so that the worlds can read task files; `cl_bench.engine.settings` re-exports it.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_bench.data.world import UNION_CLASSIFIERS
from cl_bench.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

WORLD_KEYS = {
    "iterations",
    "few_shot_iterations",
    "batch_size",
    "full_finetune_lr",
    "full_finetune_lr_by_dataset",
    "shots",
}
REQUIRED = {
    "name",
    "version",
    "description",
    "task_agnostic",
    "holdout",
    "shots",
    "iterations",
    "batch_size",
    "split_seed",
}
OPTIONAL = {
    "datasets",
    "orders",
    "few_shot_iterations",
    "real",
    "toy",
    "dataset_protocol",
    "union_classifier",
}
# The dataset definitions a setting reads: "mtil" = tasks/datasets/<name>.toml (ZSCL's MTIL
# datasets), any other protocol P = tasks/datasets/P/<name>.toml (e.g. "xtail": the CoOp-style
# datasets of RAIL / CoDyRA). A world that has its own definitions (toy) ignores it.
DEFAULT_PROTOCOL = "mtil"


def tasks_dir() -> Path:
    """The `tasks/` data directory.

    $CLBENCH_TASKS_DIR when set; else the data package `cl_bench.tasks` (the repository's
    top-level tasks/ folder, shipped inside the wheel and mapped there by an editable install);
    else tasks/ beside the package in a checkout whose editable install predates that mapping.
    """
    env = os.environ.get("CLBENCH_TASKS_DIR")
    if env:
        if (Path(env) / "settings").is_dir():
            return Path(env)
        raise UserError(
            f"CLBENCH_TASKS_DIR={env} has no settings/ folder; point it at a tasks/ directory or unset it"
        )
    for path in (_packaged_tasks_dir(), Path(__file__).resolve().parents[2] / "tasks"):
        if path is not None and (path / "settings").is_dir():
            return path
    raise UserError(
        "cannot find the tasks/ directory (the data package cl_bench.tasks); reinstall cl-bench (pip install -e . in a checkout) or set CLBENCH_TASKS_DIR"
    )


def _packaged_tasks_dir() -> Path | None:
    """The folder of the `cl_bench.tasks` data package, or None when it is not installed."""
    try:
        root = importlib.resources.files("cl_bench.tasks")
    except ModuleNotFoundError:
        return None
    # A namespace package (tasks/ has no __init__.py) gives a MultiplexedPath, not a Path:
    # its children are real paths on disk.
    settings = root.joinpath("settings")
    return Path(str(settings)).parent if settings.is_dir() else None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: malformed TOML ({exc}); fix the file") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}; check the path") from None


@dataclass(frozen=True)
class Setting:
    """A protocol resolved for one world, order and shot count."""

    name: str
    version: int
    description: str
    task_agnostic: bool
    datasets: tuple[str, ...]  # the stream, in task order
    holdout: tuple[str, ...]
    order: str
    shots: int | None  # None = all training images
    iterations: int  # per task, for this world (after --iterations override)
    paper_iterations: int  # the paper's per-task budget (schedules scale against it)
    batch_size: int
    split_seed: int
    full_finetune_lr: float
    world: str
    # ZSCL's scripts give some datasets their own full-fine-tuning lr (5e-5 for Aircraft and
    # MNIST on full-shot MTIL); (dataset, lr) pairs, recorded in the manifest with the setting.
    full_finetune_lr_by_dataset: tuple[tuple[str, float], ...] = ()
    # Which dataset definitions the real world reads (tasks/datasets/ or tasks/datasets/<p>/).
    dataset_protocol: str = DEFAULT_PROTOCOL
    # Task-agnostic settings: how the union classifier (and the hold-out classifiers) are built,
    # one prompt per class ("codyra": each dataset's templates[0]; "rail": 'a photo of a {}.').
    # None: task-incremental, every classifier averages all of the dataset's templates.
    union_classifier: str | None = None

    def full_finetune_lr_for(self, dataset: str) -> float:
        return dict(self.full_finetune_lr_by_dataset).get(dataset, self.full_finetune_lr)

    @property
    def eval_datasets(self) -> tuple[str, ...]:
        return self.datasets + tuple(h for h in self.holdout if h not in self.datasets)


def check_keys(where: str, table: dict[str, Any], required: set[str], optional: set[str]) -> None:
    """Strict tables (settings, dataset specs): a missing or unknown key is an error, not a default."""
    missing = required - table.keys()
    unknown = table.keys() - required - optional
    if missing:
        raise UserError(f"{where}: missing keys {sorted(missing)}; add them")
    if unknown:
        raise UserError(
            f"{where}: unknown keys {sorted(unknown)}; valid keys are {sorted(required | optional)}"
        )


def available_settings() -> list[str]:
    return sorted(p.stem for p in (tasks_dir() / "settings").glob("*.toml"))


def load_setting_file(name: str) -> dict[str, Any]:
    path = tasks_dir() / "settings" / f"{name}.toml"
    if not path.is_file():
        valid = ", ".join(available_settings())
        raise UserError(f"unknown setting {name!r}; valid settings: {valid}")
    raw = read_toml(path)
    check_keys(str(path), raw, REQUIRED, OPTIONAL)
    if ("datasets" in raw) == ("orders" in raw):
        raise UserError(f"{path}: give exactly one of 'datasets' or '[orders]'")
    for world in ("real", "toy"):
        section = raw.get(world, {})
        # [toy.base]: what a non-default toy CLIP changes (its own calibrated lr, ...)
        variants = toy_variants() if world == "toy" else set()
        bad = set(section) - WORLD_KEYS - variants
        if bad:
            keys = sorted(WORLD_KEYS) + [f"[toy.{v}]" for v in sorted(variants)]
            raise UserError(f"{path}: unknown keys {sorted(bad)} in [{world}]; valid: {keys}")
        for variant in variants & set(section):
            bad = (
                set(section[variant]) - WORLD_KEYS
                if isinstance(section[variant], dict)
                else {variant}
            )
            if bad:
                raise UserError(
                    f"{path}: unknown keys {sorted(bad)} in [toy.{variant}]; valid: {sorted(WORLD_KEYS)}"
                )
    _check_protocol_keys(path, raw)
    _check_dataset_names(path, raw)
    raw["_path"] = str(path)
    return raw


def toy_variants() -> set[str]:
    """The toy CLIP sizes a setting may give a [toy.<size>] section (every one but the default)."""
    from cl_bench.data.toy.model import DEFAULT_TOY_MODEL, TOY_MODELS

    return set(TOY_MODELS) - {DEFAULT_TOY_MODEL}


def world_section(raw: dict[str, Any], world: str, toy_model: str | None) -> dict[str, Any]:
    """The setting's values for one world; a non-default toy CLIP's [toy.<size>] replaces
    the [toy] keys it names, and must name full_finetune_lr (calibrated per model, §5)."""
    from cl_bench.data.toy.model import DEFAULT_TOY_MODEL

    variants = toy_variants() if world == "toy" else set()
    section = {k: v for k, v in raw.get(world, {}).items() if k not in variants}
    if world != "toy" or toy_model in (None, DEFAULT_TOY_MODEL):
        return section
    variant = raw.get("toy", {}).get(toy_model)
    if not isinstance(variant, dict) or "full_finetune_lr" not in variant:
        raise UserError(
            f"{raw['_path']}: [toy.{toy_model}] needs full_finetune_lr (the --toy-model {toy_model} CLIP's own calibration; docs/toy-world.md)"
        )
    return {**section, **variant}


def protocol_datasets_dir(protocol: str) -> Path:
    """The folder of a dataset protocol's definitions (tasks/datasets/ for mtil)."""
    base = tasks_dir() / "datasets"
    return base if protocol == DEFAULT_PROTOCOL else base / protocol


def available_protocols() -> list[str]:
    base = tasks_dir() / "datasets"
    subdirs = [p.name for p in base.iterdir() if p.is_dir() and any(p.glob("*.toml"))]
    return [DEFAULT_PROTOCOL, *sorted(subdirs)] if base.is_dir() else [DEFAULT_PROTOCOL]


def _check_protocol_keys(path: Path, raw: dict[str, Any]) -> None:
    protocol = raw.get("dataset_protocol", DEFAULT_PROTOCOL)
    valid = available_protocols()
    if protocol not in valid:
        raise UserError(
            f"{path}: dataset_protocol {protocol!r} has no definitions; valid: {', '.join(valid)} (folders of tasks/datasets/)"
        )
    if "union_classifier" in raw:
        if not raw["task_agnostic"]:
            raise UserError(
                f"{path}: union_classifier applies to task-agnostic settings only; drop it or set task_agnostic = true"
            )
        if raw["union_classifier"] not in UNION_CLASSIFIERS:
            raise UserError(
                f"{path}: union_classifier {raw['union_classifier']!r} is unknown; valid: {', '.join(UNION_CLASSIFIERS)}"
            )


def _check_dataset_names(path: Path, raw: dict[str, Any]) -> None:
    """Every dataset a setting names must have its task file in its protocol's folder."""
    folder = protocol_datasets_dir(raw.get("dataset_protocol", DEFAULT_PROTOCOL))
    known = sorted(p.stem for p in folder.glob("*.toml"))
    lists = {"holdout": raw["holdout"]}
    if "datasets" in raw:
        lists["datasets"] = raw["datasets"]
    else:
        if not isinstance(raw["orders"], dict) or not raw["orders"]:
            raise UserError(f"{path}: [orders] must be a table of order name -> dataset list")
        lists.update({f"orders.{k}": v for k, v in raw["orders"].items()})
    for key, names in lists.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError(f"{path}: {key} must be a list of dataset names")
        unknown = [n for n in names if n not in known]
        if known and unknown:
            raise UserError(
                f"{path}: unknown dataset(s) {unknown} in {key}; valid: {', '.join(known)} (one file each in {folder.relative_to(tasks_dir().parent).as_posix()}/)"
            )


def resolve_setting(
    name: str,
    world: str,
    order: str | None = None,
    shots: int | None = None,
    iterations: int | None = None,
    batch_size: int | None = None,
    union_classifier: str | None = None,
    toy_model: str | None = None,
) -> Setting:
    raw = load_setting_file(name)
    per_world = world_section(raw, world, toy_model)
    if "orders" in raw:
        orders = raw["orders"]
        order = order or next(iter(orders))
        if order not in orders:
            raise UserError(
                f"setting {name} has no order {order!r}; valid orders: {', '.join(orders)}"
            )
        datasets = orders[order]
    else:
        if order not in (None, "I"):
            raise UserError(f"setting {name} has a single order (I); drop --order {order}")
        order = "I"
        datasets = raw["datasets"]
    default_shots = per_world.get("shots", raw["shots"])
    eff_shots = default_shots if shots is None else shots
    if eff_shots is not None and eff_shots < 0:
        raise UserError(f"--shots must be >= 0 (0 = all images), got {eff_shots}")
    few_shot_variant = shots is not None and shots > 0 and not raw["shots"]
    if few_shot_variant and "few_shot_iterations" in raw:
        paper_iters = int(raw["few_shot_iterations"])
        world_iters = int(
            per_world.get("few_shot_iterations", per_world.get("iterations", paper_iters))
        )
    else:
        paper_iters = int(raw["iterations"])
        world_iters = int(per_world.get("iterations", paper_iters))
    if iterations is not None:
        if iterations <= 0:
            raise UserError(f"--iterations must be a positive integer, got {iterations}")
        world_iters = iterations
    bs = int(per_world.get("batch_size", raw["batch_size"])) if batch_size is None else batch_size
    if bs <= 0:
        raise UserError(f"--batch-size must be a positive integer, got {bs}")
    if "full_finetune_lr" not in per_world:
        raise UserError(f"{raw['_path']}: [{world}] needs full_finetune_lr")
    # ZSCL's per-dataset lrs belong to its full-shot scripts; the few-shot variant (CoDyRA's
    # 5-shot MTIL) has no such table, so it trains every dataset at full_finetune_lr.
    by_dataset = {} if few_shot_variant else per_world.get("full_finetune_lr_by_dataset", {})
    if not isinstance(by_dataset, dict) or set(by_dataset) - set(datasets):
        stray = (
            sorted(set(by_dataset) - set(datasets)) if isinstance(by_dataset, dict) else by_dataset
        )
        raise UserError(
            f"{raw['_path']}: [{world}.full_finetune_lr_by_dataset] names {stray!r}, not datasets of order {order}; give dataset = lr pairs for datasets of the stream"
        )
    union = _union_classifier(raw, name, union_classifier)
    return Setting(
        name=raw["name"],
        version=int(raw["version"]),
        description=raw["description"],
        task_agnostic=bool(raw["task_agnostic"]),
        datasets=tuple(datasets),
        holdout=tuple(raw["holdout"]),
        order=order,
        shots=eff_shots or None,
        iterations=world_iters,
        paper_iterations=paper_iters,
        batch_size=bs,
        split_seed=int(raw["split_seed"]),
        full_finetune_lr=float(per_world["full_finetune_lr"]),
        world=world,
        full_finetune_lr_by_dataset=tuple((d, float(v)) for d, v in sorted(by_dataset.items())),
        dataset_protocol=raw.get("dataset_protocol", DEFAULT_PROTOCOL),
        union_classifier=union,
    )


def _union_classifier(raw: dict[str, Any], name: str, given: str | None) -> str | None:
    """The setting's convention (default codyra), or --union-classifier (task-agnostic only)."""
    if not raw["task_agnostic"]:
        if given is not None:
            raise UserError(
                f"--union-classifier applies to task-agnostic settings only; setting {name} is task-incremental (each dataset averages its templates); drop it"
            )
        return None
    if given is not None and given not in UNION_CLASSIFIERS:
        raise UserError(
            f"--union-classifier {given!r} is unknown; valid: {', '.join(UNION_CLASSIFIERS)}"
        )
    return given or raw.get("union_classifier", next(iter(UNION_CLASSIFIERS)))


def setting_dataset_rows(world: str, setting: str) -> list[dict[str, Any]]:
    """Per dataset of a setting, as the setting's protocol defines it in `world` ("all": each
    world): class count and names, and the classifier: the one template a task-agnostic
    setting's union (and hold-out) classifier uses, or the number of templates averaged."""
    from cl_bench.data.worlds import world_class, world_names

    names = world_names()
    if world not in (*names, "all"):
        raise UserError(f"unknown world {world!r}; valid: {', '.join(names)}, all")
    rows = []
    for name in names if world == "all" else [world]:
        s = resolve_setting(setting, name)
        w = world_class(name)()
        w.select_protocol(s.dataset_protocol)
        for ds in s.eval_datasets:
            info = w.dataset_info(ds)
            rows.append(
                {
                    "name": ds,
                    "world": name,
                    "role": "stream" if ds in s.datasets else "holdout",
                    "dataset_protocol": s.dataset_protocol,
                    "num_classes": info.num_classes,
                    "union_classifier": s.union_classifier,
                    "union_template": (
                        info.union_template(s.union_classifier) if s.union_classifier else None
                    ),
                    "templates_averaged": 1 if s.union_classifier else len(info.templates),
                    "classnames": list(info.classnames),
                }
            )
    return rows
