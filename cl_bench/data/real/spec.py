"""Dataset files: class names, templates, source, split rules, one file per dataset and protocol.

`tasks/datasets/<name>.toml` are the MTIL definitions (ZSCL's datasets); a protocol P other
than "mtil" has its own folder, `tasks/datasets/P/<name>.toml` (X-TAIL: the CoOp-style datasets
of RAIL / CoDyRA, read from CoOp's split files). A setting picks one with `dataset_protocol`.

Strict: a missing or unknown key is an error that names the file and the key, because in a
benchmark a typo must not become a silent default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_bench.data.taskfiles import (
    DEFAULT_PROTOCOL,
    check_keys,
    protocol_datasets_dir,
    read_toml,
)
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
    # A CoOp split file (split_zhou_<Dataset>.json: {"train"|"val"|"test": [[path, label,
    # classname], ...]}) over an image folder; both relative to the data root.
    "split_file": (
        {"kind", "split_file", "split_url", "image_dir", "manual"},
        {"classname_suffix"},
    ),
}
SPLIT_KEYS: dict[str, tuple[set[str], set[str]]] = {  # rule -> (required, optional)
    "given": ({"rule", "train", "test"}, {"few_shot_train", "few_shot_sampler"}),
    "random": ({"rule", "train_fraction"}, {"pool"}),
    "split_file": ({"rule", "train", "test", "few_shot_sampler"}, set()),
}
# How K images per class are drawn from the train split (splits.py):
#   first_after_permutation: the first K of each class after a seeded torch.randperm (ZSCL-style,
#                            the MTIL default)
#   coop:         CoOp / dassl DatasetBase.generate_fewshot_dataset: classes in order of first
#                 appearance, random.sample(items, K) (random.choices when short) from Python's
#                 random seeded with the split seed
#   numpy_choice: RAIL / CoDyRA collections.FewShotDataset (MNIST, CIFAR100): classes sorted,
#                 np.random.choice(indices, K, replace=False) from a RandomState(split seed)
FEW_SHOT_SAMPLERS = ("first_after_permutation", "coop", "numpy_choice")

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
    protocol: str = DEFAULT_PROTOCOL

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def few_shot_sampler(self) -> str:
        return str(self.split.get("few_shot_sampler", FEW_SHOT_SAMPLERS[0]))

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


def parse_spec(raw: dict[str, Any], path: Path, protocol: str = DEFAULT_PROTOCOL) -> DatasetSpec:
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
    if (split["rule"] == "split_file") != (source["kind"] == "split_file"):
        raise UserError(
            f'{path}: a split_file source goes with rule = "split_file" and only with it'
        )
    if split.get("few_shot_sampler", FEW_SHOT_SAMPLERS[0]) not in FEW_SHOT_SAMPLERS:
        raise UserError(
            f"{path} [split]: few_shot_sampler must be one of {', '.join(FEW_SHOT_SAMPLERS)}"
        )
    if split["rule"] == "split_file":
        for part in ("train", "test"):
            if split[part] not in ("train", "val", "test"):
                raise UserError(
                    f"{path} [split]: {part} names a list of the split file: train, val or test"
                )
    else:
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
        protocol,
    )


def datasets_dir(protocol: str = DEFAULT_PROTOCOL) -> Path:
    return protocol_datasets_dir(protocol)


def available_datasets(protocol: str = DEFAULT_PROTOCOL) -> list[str]:
    return sorted(p.stem for p in datasets_dir(protocol).glob("*.toml"))


def load_spec(name: str, protocol: str = DEFAULT_PROTOCOL) -> DatasetSpec:
    path = datasets_dir(protocol) / f"{name}.toml"
    if not path.is_file():
        where = "" if protocol == DEFAULT_PROTOCOL else f" in protocol {protocol}"
        raise UserError(
            f"unknown dataset {name!r}{where}; valid datasets: {', '.join(available_datasets(protocol))} (files in {datasets_dir(protocol)})"
        )
    return parse_spec(read_toml(path), path, protocol)
