"""Dataset files (`tasks/datasets/<name>.toml`): class names, templates, source, split rules.

Strict: a missing or unknown key is an error that names the file and the key, because in a
benchmark a typo must not become a silent default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_bench.data.taskfiles import check_keys, read_toml, tasks_dir
from cl_bench.errors import UserError

TOP_REQUIRED = {
    "version",
    "name",
    "title",
    "provenance",
    "num_classes",
    "classnames",
    "templates",
    "source",
    "split",
}
SOURCE_KEYS: dict[str, tuple[set[str], set[str]]] = {  # kind -> (required, optional)
    "torchvision": ({"kind", "class", "marker", "download"}, {"args", "subdir", "manual"}),
    "hf": ({"kind", "id"}, {"config", "revision", "image_key", "label_key", "manual"}),
    "folder": ({"kind", "path", "marker"}, {"manual"}),
}
SPLIT_KEYS: dict[str, tuple[set[str], set[str]]] = {  # rule -> (required, optional)
    "given": ({"rule", "train", "test"}, {"few_shot_train"}),
    "random": ({"rule", "train_fraction"}, {"pool"}),
}

Selector = list[dict[str, Any]]  # one or more source selectors whose samples are concatenated


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    version: int
    title: str
    provenance: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    source: dict[str, Any]
    split: dict[str, Any]
    path: Path

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def selector(self, part: str) -> Selector:
        """Source selectors of 'train', 'test', 'few_shot_train' or 'pool' (random rule)."""
        if part == "few_shot_train" and part not in self.split:
            part = "train"
        if part == "pool":
            value = self.split.get("pool", {})
        else:
            value = self.split[part]
        return [dict(v) for v in (value if isinstance(value, list) else [value])]


def _check_selector(where: str, value: Any) -> None:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, dict) for v in items):
        raise UserError(
            f"{where}: a split selector must be a table or a list of tables, got {value!r}"
        )


def parse_spec(raw: dict[str, Any], path: Path) -> DatasetSpec:
    """Validate one dataset file's content."""
    check_keys(str(path), raw, TOP_REQUIRED, set())
    if raw["name"] != path.stem:
        raise UserError(
            f"{path}: name {raw['name']!r} differs from the file name {path.stem!r}; make them equal"
        )
    if not isinstance(raw["version"], int) or raw["version"] < 1:
        raise UserError(f"{path}: version must be a positive integer")
    classnames, templates = raw["classnames"], raw["templates"]
    if not isinstance(classnames, list) or not all(isinstance(c, str) and c for c in classnames):
        raise UserError(f"{path}: classnames must be a list of non-empty strings")
    if raw["num_classes"] != len(classnames):
        raise UserError(
            f"{path}: num_classes = {raw['num_classes']} but {len(classnames)} classnames are listed; make them agree"
        )
    if not isinstance(templates, list) or not templates:
        raise UserError(f"{path}: templates must be a non-empty list")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise UserError(
                f"{path}: template {t!r} must contain the placeholder {{}} exactly once"
            )
    source, split = raw["source"], raw["split"]
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_KEYS:
        raise UserError(f"{path}: [source] kind must be one of {sorted(SOURCE_KEYS)}")
    check_keys(f"{path} [source]", source, *SOURCE_KEYS[source["kind"]])
    if not isinstance(split, dict) or split.get("rule") not in SPLIT_KEYS:
        raise UserError(f"{path}: [split] rule must be one of {sorted(SPLIT_KEYS)}")
    check_keys(f"{path} [split]", split, *SPLIT_KEYS[split["rule"]])
    if split["rule"] == "random" and not 0.0 < float(split["train_fraction"]) < 1.0:
        raise UserError(f"{path} [split]: train_fraction must lie in (0, 1)")
    for part in ("train", "test", "few_shot_train", "pool"):
        if part in split:
            _check_selector(f"{path} [split] {part}", split[part])
    return DatasetSpec(
        raw["name"],
        raw["version"],
        raw["title"],
        raw["provenance"],
        tuple(classnames),
        tuple(templates),
        source,
        split,
        path,
    )


def datasets_dir() -> Path:
    return tasks_dir() / "datasets"


def available_datasets() -> list[str]:
    return sorted(p.stem for p in datasets_dir().glob("*.toml"))


def load_spec(name: str) -> DatasetSpec:
    path = datasets_dir() / f"{name}.toml"
    if not path.is_file():
        raise UserError(
            f"unknown dataset {name!r}; valid datasets: {', '.join(available_datasets())} (files in {datasets_dir()})"
        )
    return parse_spec(read_toml(path), path)
