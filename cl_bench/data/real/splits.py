"""Which samples a split holds: given splits, seeded 80/20 splits, few-shot subsets, split files.

All randomness comes from the setting's split seed (42), never from the run seed, so two
runs (and two labs) see the same images. Every split is written as a manifest (id, label).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from cl_bench.data.real.sources import Pool, open_file
from cl_bench.data.real.spec import DatasetSpec
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


def coop_few_shot(pool: Pool, shots: int, seed: int) -> Pool:
    """CoOp / dassl `DatasetBase.generate_fewshot_dataset(train, num_shots=K)` (repeat=True).

    The train list is grouped by label in order of first appearance; each group gives
    `random.sample(items, K)`, or `random.choices(items, k=K)` when it holds fewer than K, from
    one Python `random` generator seeded with the split seed; the groups are concatenated in
    that order. This equals the reference run right after `random.seed(seed)`; in RAIL and
    CoDyRA the global generator has already served earlier datasets' draws (see
    docs/real-data.md), so their exact subsets are not reproducible one dataset at a time.
    """
    rng = random.Random(seed)
    groups: dict[int, list[int]] = {}
    for i, y in enumerate(pool.labels.tolist()):
        groups.setdefault(int(y), []).append(i)
    keep: list[int] = []
    for items in groups.values():
        keep += rng.sample(items, shots) if len(items) >= shots else rng.choices(items, k=shots)
    return pool.subset(keep)


def numpy_choice_few_shot(pool: Pool, shots: int, seed: int) -> Pool:
    """RAIL / CoDyRA `collections.FewShotDataset` (their MNIST and CIFAR100): classes in sorted
    order, `np.random.choice(indices_of_class, K, replace=len < K)` from a RandomState seeded
    with the split seed (the references draw from numpy's global generator, seeded at start)."""
    rs = np.random.RandomState(seed)
    keep: list[int] = []
    for cls in np.unique(pool.labels):
        idx = np.where(pool.labels == cls)[0]
        keep += rs.choice(idx, shots, replace=len(idx) < shots).tolist()
    return pool.subset(keep)


def sample_few_shot(spec: DatasetSpec, pool: Pool, shots: int, seed: int) -> Pool:
    """K images per class with the dataset's sampler ([split] few_shot_sampler)."""
    sampler = spec.few_shot_sampler
    if sampler == "coop":
        return coop_few_shot(pool, shots, seed)
    if sampler == "numpy_choice":
        return numpy_choice_few_shot(pool, shots, seed)
    return few_shot(pool, shots, seed, spec.name, spec.num_classes)


def _split_entries(path: Path, raw: dict, part: str) -> list[list]:
    if part not in raw or not isinstance(raw[part], list):
        raise UserError(f"split file {path} has no {part!r} list (keys: {sorted(raw)})")
    for entry in raw[part]:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], int)
            and isinstance(entry[2], str)
        ):
            raise UserError(
                f"split file {path}: entries must be [path, label, classname], got {entry!r}"
            )
    return raw[part]


def check_split_classnames(spec: DatasetSpec, path: Path, raw: dict) -> None:
    """The names a split file gives each label (plus the module's suffix) must be the spec's."""
    suffix = spec.source.get("classname_suffix", "")
    named: dict[int, str] = {}
    for part in ("train", "val", "test"):
        for _, label, classname in _split_entries(path, raw, part) if part in raw else ():
            if named.setdefault(label, classname) != classname:
                raise UserError(
                    f"split file {path}: label {label} names both {named[label]!r} and {classname!r}; it is not a CoOp split file"
                )
    if sorted(named) != list(range(spec.num_classes)):
        raise UserError(
            f"split file {path} has labels {min(named, default=0)}..{max(named, default=-1)} ({len(named)} classes), {spec.path} lists {spec.num_classes}; get the split file of {spec.source['split_url']}"
        )
    wrong = [y for y in sorted(named) if named[y] + suffix != spec.classnames[y]]
    if wrong:
        y = wrong[0]
        raise UserError(
            f"split file {path}: {len(wrong)} of {spec.num_classes} class names differ from {spec.path} (label {y}: {named[y] + suffix!r}, expected {spec.classnames[y]!r}); use CoOp's {Path(spec.source['split_file']).name} ({spec.source['split_url']})"
        )


def read_coop_split(spec: DatasetSpec, path: Path, part: str, data_root: Path) -> Pool:
    """One list of a CoOp split file, its class names checked against the spec; image paths
    are relative to the spec's image_dir (under the data root), as CoOp's read_split joins them."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(
            f"split file {path} unreadable ({exc}); get CoOp's {path.name} from {spec.source['split_url']}"
        ) from None
    if not isinstance(raw, dict):
        raise UserError(f"split file {path}: expected a JSON object with train / val / test lists")
    check_split_classnames(spec, path, raw)
    entries = _split_entries(path, raw, part)
    image_dir = Path(spec.source["image_dir"])
    ids = [(image_dir / impath).as_posix() for impath, _, _ in entries]
    labels = np.asarray([label for _, label, _ in entries], dtype=np.int64)
    files = [data_root / i for i in ids]
    return Pool(ids, labels, lambda i: open_file(files[i]))


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
