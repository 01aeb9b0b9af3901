"""The contract between the engine and a data world (toy or real).

A world answers four questions: which datasets exist (class names, templates), which
images a split holds (decoded uint8 at the backbone's resolution), which backbone to
use, and which reference data distillation learners may draw on.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cl_bench.models.backbone import Backbone


# Task-agnostic (X-TAIL) classifiers: one prompt per class, no template averaging. The first
# entry is the default of a task-agnostic setting that names none.
#   codyra: CoDyRA main.py evaluation(): dataset.template[0].format(c), class names verbatim
#   rail:   RAIL primal_RAIL.py / utils.clip_classifier: 'a photo of a {}.' for every dataset,
#           with '_' in a class name replaced by ' ' (clip_classifier does so)
GENERIC_TEMPLATE = "a photo of a {}."
UNION_CLASSIFIERS = {
    "codyra": "each dataset's templates[0], class names verbatim (CoDyRA main.py evaluation)",
    "rail": "'a photo of a {}.' for every dataset, '_' -> ' ' (RAIL utils.clip_classifier)",
}


def cache_root() -> Path:
    """Where every world keeps what it decodes or generates: $CLBENCH_CACHE, else the
    platform's user cache dir for cl-bench."""
    env = os.environ.get("CLBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cl-bench"))


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

    def union_template(self, convention: str) -> str:
        """The one template a task-agnostic classifier formats this dataset's classes with."""
        if convention not in UNION_CLASSIFIERS:
            from cl_bench.errors import UserError

            raise UserError(
                f"unknown union classifier {convention!r}; valid: {', '.join(UNION_CLASSIFIERS)}"
            )
        return self.templates[0] if convention == "codyra" else GENERIC_TEMPLATE

    def union_prompts(self, convention: str) -> list[str]:
        """One prompt per class, as the convention's reference code writes it."""
        template = self.union_template(convention)
        if convention == "rail":
            return [template.format(c.replace("_", " ")) for c in self.classnames]
        return [template.format(c) for c in self.classnames]


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
    # Which dataset definitions the run's setting asks for (its `dataset_protocol`); the engine
    # calls select_protocol before anything is checked or loaded. A world with only its own
    # definitions (toy) records it and serves the same datasets.
    dataset_protocol: str = "mtil"

    def select_protocol(self, protocol: str) -> None:
        self.dataset_protocol = protocol

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
