"""The contract between the engine and a data world (toy or real).

A world answers four questions: which datasets exist (class names, templates), which
images a split holds (decoded uint8 at the backbone's resolution), which backbone to
use, and which reference data distillation learners may draw on.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cl_bench.models.backbone import Backbone


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]  # "a photo of a {}, a type of aircraft."; templates[0] trains
    world: str

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self, template_index: int = 0) -> list[str]:
        return [self.templates[template_index].format(c) for c in self.classnames]


@dataclass
class ImageSet:
    """A split, decoded: uint8 images [N, H, W, 3] (numpy array or memmap) and int labels [N]."""

    images: np.ndarray
    labels: np.ndarray
    ids_hash: str  # hash of the sample identities + labels (goes into the run manifest)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def hash_ids(ids: list[str] | np.ndarray, labels: np.ndarray) -> str:
    """A stable hash of which samples (by id) with which labels a split holds."""
    h = hashlib.sha256()
    for i, y in zip(ids, labels.tolist(), strict=True):
        h.update(f"{i}\t{y}\n".encode())
    return h.hexdigest()[:16]


class DataWorld(ABC):
    name: str

    @abstractmethod
    def dataset_names(self) -> list[str]:
        """All datasets this world can serve."""

    @abstractmethod
    def dataset_info(self, name: str) -> DatasetInfo:
        """Class names and templates; unknown name -> UserError listing valid names."""

    @abstractmethod
    def load_split(
        self, name: str, split: str, shots: int | None, split_seed: int, image_size: int
    ) -> ImageSet:
        """split in {"train", "test"}; shots=K keeps K images per class (train only)."""

    @abstractmethod
    def backbone(self, device: torch.device) -> Backbone:
        """The CLIP model this world is evaluated with."""

    def check(self, dataset_names: list[str]) -> list[str]:
        """Missing pieces (one line each, with the fix) before a run starts; [] when ready."""
        return []

    def missing_requirements(self, requires: frozenset[str]) -> list[str]:
        """What this world cannot give a learner that `requires` it (one line each, with the fix)."""
        if "reference_data" in requires and not self.provides_reference_data():
            return [
                f"the learner needs reference data for distillation, which the {self.name} world does not provide"
            ]
        return []

    def provides_reference_data(self) -> bool:
        """True when `reference_data` can answer (checked before any data is loaded)."""
        return type(self).reference_data is not DataWorld.reference_data

    def reference_data(
        self, num_images: int, num_captions: int, seed: int, image_size: int
    ) -> tuple[np.ndarray, list[str]]:
        """uint8 reference images [N, H, W, 3] and captions for distillation learners."""
        from cl_bench.errors import UserError

        raise UserError(
            f"the {self.name} world provides no reference data for distillation learners"
        )

    def describe(self) -> dict:
        """World parameters for the manifest (generator version, weights file hash...)."""
        return {"world": self.name}
