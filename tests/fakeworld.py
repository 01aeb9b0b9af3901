"""A small generated data world for engine tests (no toy weights, no real data needed)."""

from __future__ import annotations

import numpy as np
import torch

from cl_bench.data.world import DatasetInfo, DataWorld, ImageSet, hash_ids
from cl_bench.errors import UserError
from cl_bench.models.backbone import Backbone
from cl_bench.models.tiny import random_tiny_clip

NAMES = [
    "aircraft",
    "caltech101",
    "cifar100",
    "dtd",
    "eurosat",
    "flowers102",
    "food101",
    "mnist",
    "oxford_pets",
    "stanford_cars",
    "sun397",
    "places365",
    "imagenet",
]


class FakeWorld(DataWorld):
    """Each dataset: 3-4 classes of coloured noise whose mean colour encodes the class."""

    name = "fake"

    def __init__(self, train_per_class: int = 8, test_per_class: int = 6) -> None:
        self.train_per_class = train_per_class
        self.test_per_class = test_per_class

    def dataset_names(self) -> list[str]:
        return list(NAMES)

    def dataset_info(self, name: str) -> DatasetInfo:
        if name not in NAMES:
            raise UserError(f"unknown dataset {name!r}")
        k = 3 + NAMES.index(name) % 2
        return DatasetInfo(
            name,
            tuple(f"{name} class {i}" for i in range(k)),
            ("a photo of a {}.", "an image of a {}."),
            "fake",
        )

    def load_split(
        self, name: str, split: str, shots: int | None, split_seed: int, image_size: int
    ) -> ImageSet:
        info = self.dataset_info(name)
        per = self.train_per_class if split == "train" else self.test_per_class
        if shots and split == "train":
            per = min(per, shots)
        rng = np.random.default_rng([NAMES.index(name), 0 if split == "train" else 1, split_seed])
        labels = np.repeat(np.arange(info.num_classes), per)
        base = rng.integers(0, 255, size=(info.num_classes, 1, 1, 3))
        noise = rng.integers(-40, 40, size=(labels.size, image_size, image_size, 3))
        images = np.clip(base[labels] + noise, 0, 255).astype(np.uint8)
        return ImageSet(
            images, labels, hash_ids([f"{split}{i}" for i in range(labels.size)], labels)
        )

    def backbone(self, device: torch.device) -> Backbone:
        return random_tiny_clip(seed=0, device=device)

    def reference_data(self, num_images, num_captions, seed, image_size):
        rng = np.random.default_rng(seed)
        return rng.integers(0, 255, size=(num_images, image_size, image_size, 3), dtype=np.uint8), [
            f"a photo of thing {i}." for i in range(num_captions)
        ]
