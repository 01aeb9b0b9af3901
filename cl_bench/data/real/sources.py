"""Where a real dataset's images come from: torchvision roots, Hugging Face `datasets`, image folders.

Each source turns a split selector into a `Pool`: sample ids (file paths relative to the data
root where there are files), integer labels, and a function that opens sample i as a PIL image.
Nothing here downloads: torchvision classes are built with download=False, Hugging Face
datasets are read from the local cache (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE respected).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cl_bench.data.real.spec import DatasetSpec, Selector
from cl_bench.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# torchvision class -> (attribute with image paths or (path, label) pairs, attribute with labels or None)
_TV_FILE_LISTS: dict[str, tuple[str, str | None]] = {
    "FGVCAircraft": ("_image_files", "_labels"),
    "DTD": ("_image_files", "_labels"),
    "Flowers102": ("_image_files", "_labels"),
    "Food101": ("_image_files", "_labels"),
    "SUN397": ("_image_files", "_labels"),
    "OxfordIIITPet": ("_images", "_labels"),
    "StanfordCars": ("_samples", None),
    "EuroSAT": ("samples", None),
    "Places365": ("imgs", None),
    "ImageFolder": ("samples", None),
}
_TV_IN_MEMORY = {
    "MNIST",
    "CIFAR10",
    "CIFAR100",
}  # images are arrays in ds.data, labels in ds.targets


@dataclass
class Pool:
    """The samples a selector picks, in the source's order."""

    ids: list[str]
    labels: np.ndarray  # int64 [N]
    open_image: Callable[[int], Image.Image]  # thread-safe; returns an RGB PIL image

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray | list[int]) -> Pool:
        index = [int(i) for i in index]
        opener = self.open_image
        return Pool([self.ids[i] for i in index], self.labels[index], lambda j: opener(index[j]))


def concat(pools: list[Pool]) -> Pool:
    if len(pools) == 1:
        return pools[0]
    offsets = np.cumsum([0] + [len(p) for p in pools])

    def opener(i: int) -> Image.Image:
        k = int(np.searchsorted(offsets, i, side="right") - 1)
        return pools[k].open_image(i - int(offsets[k]))

    return Pool(
        [i for p in pools for i in p.ids], np.concatenate([p.labels for p in pools]), opener
    )


def open_file(path: str | Path) -> Image.Image:
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def marker_path(spec: DatasetSpec, data_root: Path) -> Path | None:
    """The file or folder whose presence means the dataset is on disk (None for hub ids)."""
    src = spec.source
    if src["kind"] == "hf":
        return Path(_hf_target(spec, data_root)) if _is_local_path(src["id"], data_root) else None
    if src["kind"] == "split_file":
        return data_root / src["image_dir"]
    return data_root / src["marker"]


def top_dir(spec: DatasetSpec, data_root: Path) -> Path | None:
    """The dataset's top folder under the data root (for its size on disk); None for hub ids."""
    if spec.source["kind"] == "hf":
        return marker_path(spec, data_root)
    marker = marker_path(spec, data_root)
    if marker is None:
        return None
    return data_root / marker.relative_to(data_root).parts[0]


def _is_local_path(hf_id: str, data_root: Path) -> bool:
    return hf_id.startswith((".", "/", "~")) or (data_root / hf_id).is_dir()


def missing(spec: DatasetSpec, data_root: Path) -> str | None:
    """Where the dataset was looked for, if it is not there; None when present."""
    src = spec.source
    if src["kind"] == "hf":
        return _hf_missing(spec, data_root)
    marker = marker_path(spec, data_root)
    return None if marker is None or marker.exists() else str(marker)


def open_pool(spec: DatasetSpec, selector: Selector, data_root: Path, cache_root: Path) -> Pool:
    """Concatenate the samples of each selector entry."""
    kind = spec.source["kind"]
    if kind == "hf":
        pools = [_hf_pool(spec, sel, data_root, cache_root) for sel in selector]
    else:
        opener = {"torchvision": _torchvision_pool, "folder": _folder_pool}[kind]
        pools = [opener(spec, sel, data_root) for sel in selector]
    pool = concat(pools)
    bad = (pool.labels < 0) | (pool.labels >= spec.num_classes)
    if bad.any():
        raise UserError(
            f"{spec.name}: the source has labels outside 0..{spec.num_classes - 1} ({sorted(set(pool.labels[bad].tolist()))[:5]}); its class list does not match {spec.path}"
        )
    return pool


# --- torchvision -------------------------------------------------------------------------
def _torchvision_pool(spec: DatasetSpec, sel: dict[str, Any], data_root: Path) -> Pool:
    import torchvision.datasets as tvd

    src = spec.source
    cls_name = src["class"]
    if (
        cls_name not in _TV_FILE_LISTS
        and cls_name not in _TV_IN_MEMORY
        and cls_name != "Caltech101"
    ):
        supported = sorted([*_TV_FILE_LISTS, *_TV_IN_MEMORY, "Caltech101"])
        raise UserError(
            f"{spec.path}: torchvision class {cls_name!r} is not supported; supported: {', '.join(supported)}"
        )
    root = data_root / src.get("subdir", "")
    kwargs = {**src.get("args", {}), **sel}
    try:
        ds = getattr(tvd, cls_name)(str(root), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError) as exc:
        raise UserError(
            f"{spec.name}: torchvision {cls_name} not found under {root} ({exc}); fix: clbench data prepare {spec.name} --root {data_root}"
        ) from None
    except ImportError as exc:
        raise UserError(
            f"{spec.name}: reading {cls_name} needs {exc.name}; fix: pip install -e '.[real]'"
        ) from None
    if cls_name in _TV_IN_MEMORY:
        data, labels = ds.data, np.asarray(ds.targets, dtype=np.int64)
        tag = f"{cls_name}/{'train' if kwargs.get('train', True) else 'test'}"
        return Pool(
            [f"{tag}/{i}" for i in range(len(labels))], labels, lambda i: _array_image(data[i])
        )
    if cls_name == "Caltech101":
        paths = [
            Path(ds.root) / "101_ObjectCategories" / ds.categories[y] / f"image_{k:04d}.jpg"
            for y, k in zip(ds.y, ds.index, strict=True)
        ]
        labels = np.asarray(ds.y, dtype=np.int64)
    else:
        files_attr, labels_attr = _TV_FILE_LISTS[cls_name]
        entries = getattr(ds, files_attr)
        if labels_attr is None:
            paths, labels = (
                [Path(p) for p, _ in entries],
                np.asarray([y for _, y in entries], dtype=np.int64),
            )
        else:
            paths, labels = (
                [Path(p) for p in entries],
                np.asarray(getattr(ds, labels_attr), dtype=np.int64),
            )
    return file_pool(paths, labels, data_root)


def _array_image(arr: Any) -> Image.Image:
    from PIL import Image

    a = arr.numpy() if hasattr(arr, "numpy") else np.asarray(arr)
    return Image.fromarray(a).convert("RGB")


def file_pool(paths: list[Path], labels: np.ndarray, data_root: Path) -> Pool:
    root = os.path.abspath(data_root)

    def rel(p: Path) -> str:
        ap = os.path.abspath(p)
        return (
            Path(os.path.relpath(ap, root)).as_posix()
            if ap.startswith(root + os.sep)
            else Path(ap).as_posix()
        )

    abs_paths = [os.path.abspath(p) for p in paths]
    return Pool([rel(p) for p in paths], labels, lambda i: open_file(abs_paths[i]))


# --- image folders -------------------------------------------------------------------------
def _folder_pool(spec: DatasetSpec, sel: dict[str, Any], data_root: Path) -> Pool:
    unknown = set(sel) - {"dir"}
    if unknown:
        raise UserError(f"{spec.path}: folder selectors take only 'dir', got {sorted(unknown)}")
    root = data_root / spec.source["path"] / sel.get("dir", "")
    if not root.is_dir():
        raise UserError(
            f"{spec.name}: image folder {root} not found; fix: clbench data prepare {spec.name} --root {data_root}"
        )
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if len(classes) != spec.num_classes:
        raise UserError(
            f"{spec.name}: {root} holds {len(classes)} class folders, {spec.path.name} lists {spec.num_classes}; one folder per class, sorted names = class order"
        )
    paths, labels = [], []
    for y, cls in enumerate(classes):
        files = sorted(f for f in (root / cls).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [y] * len(files)
    return file_pool(paths, np.asarray(labels, dtype=np.int64), data_root)


# --- Hugging Face datasets -------------------------------------------------------------------
def _hf_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def _hf_target(spec: DatasetSpec, data_root: Path) -> str:
    hf_id = spec.source["id"]
    local = data_root / hf_id
    return (
        str(local)
        if not hf_id.startswith((".", "/", "~")) and local.is_dir()
        else os.path.expanduser(hf_id)
    )


def _hf_missing(spec: DatasetSpec, data_root: Path) -> str | None:
    """A local directory must exist; a hub id must have a snapshot in the HF hub cache (no network)."""
    target = _hf_target(spec, data_root)
    if _is_local_path(spec.source["id"], data_root):
        return None if Path(target).is_dir() else target
    from huggingface_hub import constants

    snapshots = (
        Path(constants.HF_HUB_CACHE) / f"datasets--{target.replace('/', '--')}" / "snapshots"
    )
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return None
    return f"Hugging Face dataset {target} in {snapshots.parent}"


def _hf_pool(spec: DatasetSpec, sel: dict[str, Any], data_root: Path, cache_root: Path) -> Pool:
    from datasets import ClassLabel, load_dataset

    unknown = set(sel) - {"split"}
    if unknown or "split" not in sel:
        raise UserError(
            f"{spec.path}: Hugging Face selectors take exactly 'split', got {sorted(sel)}"
        )
    src = spec.source
    target = _hf_target(spec, data_root)
    try:
        if (Path(target) / "dataset_dict.json").is_file():  # a DatasetDict written by save_to_disk
            from datasets import load_from_disk

            ds = load_from_disk(target)[sel["split"]]
        else:
            local = _is_local_path(
                src["id"], data_root
            )  # a local folder's arrow conversion lives in our cache
            cache_dir = str(cache_root / "hf") if local else None
            ds = load_dataset(
                target,
                src.get("config"),
                split=sel["split"],
                revision=src.get("revision"),
                cache_dir=cache_dir,
            )
    except Exception as exc:  # datasets raises many types for "not there"
        hint = " (offline mode is on: it must already be in the HF cache)" if _hf_offline() else ""
        raise UserError(
            f"{spec.name}: cannot load Hugging Face dataset {target} split {sel['split']}{hint}: {type(exc).__name__}: {str(exc)[:160]}; fix: clbench data prepare {spec.name}"
        ) from None
    image_key, label_key = src.get("image_key", "image"), src.get("label_key", "label")
    for key in (image_key, label_key):
        if key not in ds.column_names:
            raise UserError(
                f"{spec.name}: {target} has no column {key!r} (columns: {ds.column_names}); set image_key/label_key in {spec.path.name}"
            )
    feature = ds.features[label_key]
    if isinstance(feature, ClassLabel) and feature.num_classes != spec.num_classes:
        raise UserError(
            f"{spec.name}: {target} has {feature.num_classes} classes, {spec.path.name} lists {spec.num_classes}"
        )
    labels = np.asarray(ds[label_key], dtype=np.int64)
    images = ds.select_columns([image_key])
    tag = f"{src['id']}/{sel['split']}"

    def opener(i: int) -> Image.Image:
        img = images[i][image_key]
        return img.convert("RGB") if hasattr(img, "convert") else _array_image(img)

    return Pool([f"{tag}/{i}" for i in range(len(labels))], labels, opener)
