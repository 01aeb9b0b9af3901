"""Which samples a split holds: given splits, seeded 80/20 splits, few-shot subsets, split files.

All randomness comes from the setting's split seed (42), never from the run seed, so two
runs (and two labs) see the same images. Every split is written as a manifest (id, label).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cl_bench.data.real.sources import Pool, open_file
from cl_bench.data.world import hash_ids
from cl_bench.errors import UserError


def seeded_permutation(n: int, seed: int) -> np.ndarray:
    """torch.randperm(n) under a fresh generator seeded with `seed` (what ZSCL's random_split draws)."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()


def random_split(pool: Pool, train_fraction: float, seed: int) -> tuple[Pool, Pool]:
    """ZSCL's split: samples sorted by id, one seeded permutation, the first int(f * n) train.

    Sorting by file path reproduces torchvision's order for Caltech101 and EuroSAT (so the
    split equals torch.utils.data.random_split(..., manual_seed(42)) there) and makes SUN397,
    whose torchvision listing follows the file system, deterministic.
    """
    order = np.argsort(np.asarray(pool.ids, dtype=object), kind="stable")
    ordered = pool.subset(order)
    perm = seeded_permutation(len(ordered), seed)
    n_train = int(train_fraction * len(ordered))
    return ordered.subset(perm[:n_train]), ordered.subset(perm[n_train:])


def few_shot(pool: Pool, shots: int, seed: int, dataset: str, num_classes: int) -> Pool:
    """Exactly `shots` samples per class: the first ones of each class after a seeded shuffle."""
    perm = seeded_permutation(len(pool), seed)
    taken: dict[int, int] = {}
    keep = []
    for i in perm.tolist():
        y = int(pool.labels[i])
        if taken.get(y, 0) < shots:
            taken[y] = taken.get(y, 0) + 1
            keep.append(i)
    counts = np.bincount(pool.labels, minlength=num_classes)  # a class with no image is short too
    short = [(c, int(n)) for c, n in enumerate(counts) if n < shots]
    if short:
        listed = ", ".join(f"class {c}: {n}" for c, n in short[:5])
        raise UserError(
            f"{dataset}: {shots}-shot needs {shots} training images per class, but {len(short)} classes have fewer ({listed}); give a split file with a larger train list (--split-dir) or fewer --shots"
        )
    return pool.subset(sorted(keep, key=lambda i: (int(pool.labels[i]), i)))


def read_split_file(path: Path, part: str, num_classes: int, data_root: Path) -> Pool:
    """A CoOp-style split JSON: {"train"|"val"|"test": [[path, label, classname], ...]}.

    Paths are relative to the file's optional "image_root" (itself relative to the data
    root), else to the data root; absolute paths are kept.
    """
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"split file {path} unreadable ({exc}); give a CoOp-style JSON") from None
    if part not in raw:
        raise UserError(f"split file {path} has no {part!r} list (keys: {sorted(raw)})")
    base = data_root / raw.get("image_root", "")
    ids: list[str] = []
    labels: list[int] = []
    names: dict[int, str] = {}
    for entry in raw[part]:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise UserError(
                f"split file {path}: entries must be [path, label, classname], got {entry!r}"
            )
        impath, label, classname = entry
        if names.setdefault(int(label), classname) != classname:
            raise UserError(
                f"split file {path}: label {label} names both {names[int(label)]!r} and {classname!r}"
            )
        ids.append(str(impath))
        labels.append(int(label))
    arr = np.asarray(labels, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise UserError(
            f"split file {path}: labels span {arr.min()}..{arr.max()}, the dataset has {num_classes} classes; the split file is for another class list"
        )
    files = [p if Path(p).is_absolute() else str(base / p) for p in ids]
    return Pool(ids, arr, lambda i: open_file(files[i]))


def write_manifest(pool: Pool, directory: Path, stem: str) -> tuple[str, Path]:
    """Write `<stem>-<hash>.tsv` (id<TAB>label per line); return the hash and the file."""
    digest = hash_ids(pool.ids, pool.labels)
    path = directory / f"{stem}-{digest}.tsv"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(pool)}")
        tmp.write_text(
            "".join(f"{i}\t{y}\n" for i, y in zip(pool.ids, pool.labels.tolist(), strict=True))
        )
        tmp.replace(path)
    return digest, path
