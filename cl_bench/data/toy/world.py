"""The embedded toy world: 13 generated domains (toy analogues of the MTIL / X-TAIL datasets and
the hold-outs) and a tiny CLIP pre-trained on the same generator (docs/toy-world.md).

Splits are generated deterministically (seeded by domain and split, independent of any run
seed), cached as .npy under $CLBENCH_CACHE (default: the user cache dir) and regenerated
identically when missing. Few-shot subsets: the first K images of each class after a
`split_seed` shuffle (PROTOCOL.md §2).
"""

from __future__ import annotations

import math
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cl_bench.data.augment import TrainView, whole_image_view
from cl_bench.data.toy.distribution import (
    GENERATOR_SEED,
    GENERATOR_VERSION,
    PretrainDistribution,
    class_bank_seed,
)
from cl_bench.data.toy.domains import DomainSpec, build_domains
from cl_bench.data.toy.model import (
    DEFAULT_TOY_MODEL,
    IMAGE_SIZE_PX,
    load_toy_backbone,
    missing_weights_message,
    toy_cache_root,
    toy_model,
    weights_sha256,
)
from cl_bench.data.toy.render import make_class_bank, render
from cl_bench.data.world import DatasetInfo, DataWorld, ImageSet, hash_ids
from cl_bench.errors import UserError

if TYPE_CHECKING:
    import torch

    from cl_bench.models.backbone import Backbone

SPLITS = ("train", "test")
_RENDER_CHUNK = 2048  # images rendered per numpy batch (bounds peak memory)


def train_images_per_class(num_classes: int) -> int:
    """~960 training images per domain, at least 20 per class (16-shot X-TAIL needs 16)."""
    return max(20, math.ceil(960 / num_classes))


def test_images_per_class(num_classes: int) -> int:
    """>= 640 test images per domain: a domain accuracy's standard error stays <= 2 points."""
    return max(8, math.ceil(640 / num_classes))


class ToyWorld(DataWorld):
    name = "toy"
    default_augment = "none"  # --augment auto; measured on toy X-TAIL (docs/real-data.md)

    def __init__(self, weights_path: Path | None = None, model: str = DEFAULT_TOY_MODEL) -> None:
        self.model = toy_model(model)
        self.weights_path = Path(weights_path) if weights_path else self.model.weights_path

    @cached_property
    def _specs(self) -> dict[str, DomainSpec]:
        return build_domains()

    def dataset_names(self) -> list[str]:
        return list(self._specs)

    def _spec(self, name: str) -> DomainSpec:
        if name not in self._specs:
            raise UserError(f"unknown toy dataset {name!r}; valid names: {', '.join(self._specs)}")
        return self._specs[name]

    def dataset_info(self, name: str) -> DatasetInfo:
        spec = self._spec(name)
        return DatasetInfo(
            name=name, classnames=spec.classnames, templates=spec.templates, world=self.name
        )

    def split_size(self, name: str, split: str) -> int:
        c = len(self._spec(name).classnames)
        per_class = train_images_per_class(c) if split == "train" else test_images_per_class(c)
        return per_class * c

    def generate(self, name: str, split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Render a whole split from scratch (deterministic; no cache involved)."""
        spec = self._spec(name)
        d = self.dataset_names().index(name)
        c = len(spec.classnames)
        per_class = train_images_per_class(c) if split == "train" else test_images_per_class(c)
        labels = np.tile(
            np.arange(c, dtype=np.int64), per_class
        )  # interleaved: any prefix is balanced
        bank = make_class_bank(spec, class_bank_seed(d), image_size)
        rng = np.random.default_rng([GENERATOR_SEED, d, SPLITS.index(split), image_size])
        images = np.empty((labels.shape[0], image_size, image_size, 3), dtype=np.uint8)
        domain_style = np.ones(labels.shape[0], dtype=bool)
        for start in range(0, labels.shape[0], _RENDER_CHUNK):
            sl = slice(start, start + _RENDER_CHUNK)
            images[sl] = render(spec, bank, labels[sl], domain_style[sl], rng)
        return images, labels

    def _cached(self, name: str, split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
        folder = toy_cache_root() / f"v{GENERATOR_VERSION}"
        img_path = folder / f"{name}-{split}-{image_size}px-images.npy"
        lab_path = folder / f"{name}-{split}-{image_size}px-labels.npy"
        if img_path.is_file() and lab_path.is_file():
            return np.load(img_path, mmap_mode="r"), np.load(lab_path)
        images, labels = self.generate(name, split, image_size)
        folder.mkdir(parents=True, exist_ok=True)
        for path, arr in (
            (lab_path, labels),
            (img_path, images),
        ):  # images last: they mark completion
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, arr)
            tmp.replace(path)
        return images, labels

    def load_split(
        self, name: str, split: str, shots: int | None, split_seed: int, image_size: int
    ) -> ImageSet:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if image_size < 8:
            raise UserError(f"toy images need image_size >= 8 px, got {image_size}")
        images, labels = self._cached(name, split, image_size)
        index = np.arange(labels.shape[0])
        if shots:
            if split != "train":
                raise UserError(f"few-shot subsets apply to the train split only, not {split!r}")
            index = few_shot_index(labels, shots, split_seed, name)
        ids = [f"toy/{name}/{split}/{i}" for i in index]
        sub_labels = np.asarray(labels[index])
        sub_images = images if index.shape[0] == labels.shape[0] else np.asarray(images[index])
        return ImageSet(images=sub_images, labels=sub_labels, ids_hash=hash_ids(ids, sub_labels))

    def train_view(
        self, name: str, shots: int | None, split_seed: int, image_size: int
    ) -> TrainView:
        """--augment rrc: the stored images are the originals, so they are cropped directly."""
        split = self.load_split(name, "train", shots, split_seed, image_size)
        return whole_image_view(split.images, split.ids_hash)

    def backbone(self, device: torch.device) -> Backbone:
        return load_toy_backbone(device, self.weights_path, self.model)

    def check(self, dataset_names: list[str]) -> list[str]:
        problems = [f"unknown toy dataset {n!r}" for n in dataset_names if n not in self._specs]
        if not self.weights_path.is_file():
            problems.append(missing_weights_message(self.weights_path, self.model))
        return problems

    def reference_data(
        self, num_images: int, num_captions: int, seed: int, image_size: int
    ) -> tuple[np.ndarray, list[str]]:
        """Images and captions drawn from the pre-training distribution (its final mixture)."""
        from cl_bench.data.toy.distribution import FINAL_DOMAIN_STYLE_FRACTION

        dist = PretrainDistribution(image_size)
        rng = np.random.default_rng([GENERATOR_SEED, 99, seed])
        images, _, _ = dist.sample(num_images, rng, FINAL_DOMAIN_STYLE_FRACTION)
        _, captions, _ = (
            dist.sample(num_captions, rng, FINAL_DOMAIN_STYLE_FRACTION)
            if num_captions
            else (None, [], None)
        )
        return images, captions

    def describe(self) -> dict:
        sha = weights_sha256(self.weights_path) if self.weights_path.is_file() else None
        return {
            "world": self.name,
            "generator_version": GENERATOR_VERSION,
            "generator_seed": GENERATOR_SEED,
            "native_image_size_px": IMAGE_SIZE_PX,
            "toy_model": self.model.key,
            "model_config": self.model.config_name,
            "weights_file": str(self.weights_path.name),
            "weights_sha256": sha,
        }


def few_shot_index(labels: np.ndarray, shots: int, split_seed: int, name: str) -> np.ndarray:
    """Indices of the first `shots` images of each class after a `split_seed` shuffle (sorted)."""
    order = np.random.default_rng(split_seed).permutation(labels.shape[0])
    shuffled = np.asarray(labels)[order]
    counts = np.bincount(shuffled)
    if counts.min() < shots:
        raise UserError(
            f"toy {name} has only {counts.min()} training images in some class; --shots must be <= {counts.min()}"
        )
    # rank of each image within its class in shuffled order: stable sort by class
    by_class = np.argsort(shuffled, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty_like(by_class)
    rank[by_class] = np.arange(by_class.shape[0]) - np.repeat(starts, counts)
    return np.sort(order[rank < shots])
