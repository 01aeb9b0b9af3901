"""The real data world: the MTIL / X-TAIL / hold-out datasets and an open_clip backbone.

Dataset facts (class names, templates, source, split rules) are data in tasks/datasets/
(MTIL) and tasks/datasets/<protocol>/ (X-TAIL: CoOp split files), picked by the setting's
`dataset_protocol`; this class joins them with a data root, a decode cache and the backbone.
Nothing is downloaded during a run: `check` lists every missing piece with its fix.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cl_bench.data.real import sources
from cl_bench.data.real.cache import decoded, entry_dir
from cl_bench.data.real.sources import Pool
from cl_bench.data.real.spec import DatasetSpec, available_datasets, load_spec
from cl_bench.data.real.splits import (
    random_split,
    read_coop_split,
    read_split_file,
    sample_few_shot,
    write_manifest,
)
from cl_bench.data.world import DatasetInfo, DataWorld, ImageSet, cache_root
from cl_bench.errors import UserError

if TYPE_CHECKING:
    import torch

    from cl_bench.models.backbone import Backbone

_MODULES_NEEDED = {
    "Flowers102": "scipy",
    "StanfordCars": "scipy",
}  # torchvision readers of .mat files


def default_data_root() -> Path:
    """$CLBENCH_DATA, else the platform's user data dir for cl-bench (…/cl-bench/datasets)."""
    env = os.environ.get("CLBENCH_DATA")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("cl-bench")) / "datasets"


class RealWorld(DataWorld):
    name = "real"
    default_augment = "rrc"  # --augment auto: the references' RandomResizedCrop (train_view)

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        data_root: str | Path | None = None,
        cache_dir: str | Path | None = None,
        split_dir: str | Path | None = None,
        reference_images: str | Path | None = None,
        reference_captions: str | Path | None = None,
        workers: int | None = None,
    ) -> None:
        from cl_bench.models.openclip import DEFAULT_MODEL, DEFAULT_PRETRAINED

        self.model = model or DEFAULT_MODEL
        self.pretrained = pretrained or DEFAULT_PRETRAINED
        self.data_root = Path(data_root).expanduser() if data_root else default_data_root()
        self.cache_root = Path(cache_dir).expanduser() if cache_dir else cache_root()
        self.split_dir = Path(split_dir).expanduser() if split_dir else None
        self.reference_images = reference_images
        self.reference_captions = (
            Path(reference_captions).expanduser() if reference_captions else None
        )
        self.workers = workers
        self._pools: dict[tuple, Pool] = {}
        self.manifests: dict[str, str] = {}  # "<dataset>/<split>" -> manifest file

    # --- what exists --------------------------------------------------------------------
    def dataset_names(self) -> list[str]:
        return available_datasets(self.dataset_protocol)

    def spec(self, name: str) -> DatasetSpec:
        return load_spec(name, self.dataset_protocol)

    def dataset_info(self, name: str) -> DatasetInfo:
        spec = self.spec(name)
        return DatasetInfo(name, spec.classnames, spec.templates, self.name)

    def split_file(self, name: str) -> Path | None:
        """The split JSON a dataset is read from: for a split_file source (X-TAIL) its CoOp file
        (--split-dir/<file name> when there, else the data root's); otherwise the CoOp-style
        override --split-dir/<name>.json when --split-dir holds one."""
        spec = self.spec(name)
        if spec.source["kind"] == "split_file":
            given = Path(spec.source["split_file"])
            if self.split_dir is not None and (self.split_dir / given.name).is_file():
                return self.split_dir / given.name
            return self.data_root / given
        if self.split_dir is None:
            return None
        path = self.split_dir / f"{name}.json"
        return path if path.is_file() else None

    def dataset_problems(self, name: str) -> list[str]:
        """Lines saying what is missing for a dataset and how to fix it; [] when ready."""
        spec = self.spec(name)
        src = spec.source
        if src["kind"] == "split_file":
            return self._split_file_problems(spec)
        lines = []
        needed = "datasets" if src["kind"] == "hf" else _MODULES_NEEDED.get(src.get("class", ""))
        if needed:
            import importlib.util

            if importlib.util.find_spec(needed) is None:
                lines.append(
                    f"{name}: reading it needs the Python package {needed}; fix: pip install -e '.[real]'"
                )
        where = sources.missing(spec, self.data_root)
        if where is None:
            return lines
        if (
            src.get("manual")
            or src["kind"] == "folder"
            or (src["kind"] == "torchvision" and not src["download"])
        ):
            fix = src.get("manual", f"put the images at {where}")
            lines.append(
                f"{name}: not found (looked for {where}); manual download: {fix}; then clbench data check {name} --root {self.data_root}"
            )
        else:
            lines.append(
                f"{name}: not found (looked for {where}); fix: clbench data prepare {name} --root {self.data_root}"
            )
        return lines

    def _split_file_problems(self, spec: DatasetSpec) -> list[str]:
        """One line per missing piece of a CoOp-split dataset: the split file, the images."""
        src, lines = spec.source, []
        split_path = self.split_file(spec.name)
        if split_path is None or not split_path.is_file():
            lines.append(
                f"{spec.name}: split file missing: {self.data_root / src['split_file']}; fix: download {Path(src['split_file']).name} from {src['split_url']} (CoOp DATASETS.md) and put it there (or in --split-dir)"
            )
        images = self.data_root / src["image_dir"]
        if not images.is_dir():
            lines.append(
                f"{spec.name}: images not found (looked for {images}); manual download: {src['manual']}"
            )
        return lines

    def check(self, dataset_names: list[str]) -> list[str]:
        from cl_bench.models.openclip import weights_problem

        lines = [line for n in dataset_names for line in self.dataset_problems(n)]
        weights = weights_problem(self.model, self.pretrained)
        if weights:
            lines.append(weights)
        return lines

    # --- splits -------------------------------------------------------------------------
    def _pool(self, spec: DatasetSpec, split: str, shots: int | None, split_seed: int) -> Pool:
        key = (spec.protocol, spec.name, split, shots, split_seed)
        if key in self._pools:
            return self._pools[key]
        split_file = self.split_file(spec.name)
        if spec.source["kind"] == "split_file":
            if split_file is None or not split_file.is_file():
                raise UserError(self._split_file_problems(spec)[0])
            pool = read_coop_split(spec, split_file, spec.split[split], self.data_root)
        elif split_file is not None:
            pool = read_split_file(split_file, split, spec.num_classes, self.data_root)
        elif spec.split["rule"] == "given":
            part = "few_shot_train" if shots and split == "train" else split
            pool = sources.open_pool(spec, spec.selector(part), self.data_root, self.cache_root)
        else:
            whole_key = (spec.protocol, spec.name, "pool", None, split_seed)
            if whole_key not in self._pools:
                whole = sources.open_pool(
                    spec, spec.selector("pool"), self.data_root, self.cache_root
                )
                train, test = random_split(whole, float(spec.split["train_fraction"]), split_seed)
                self._pools[(spec.protocol, spec.name, "train", None, split_seed)] = train
                self._pools[(spec.protocol, spec.name, "test", None, split_seed)] = test
                self._pools[whole_key] = whole
            pool = self._pools[(spec.protocol, spec.name, split, None, split_seed)]
        if shots and split == "train":
            pool = sample_few_shot(spec, pool, shots, split_seed)
        if len(pool) == 0:
            raise UserError(
                f"{spec.name}: the {split} split is empty; check the dataset under {self.data_root}"
            )
        self._pools[key] = pool
        return pool

    def load_split(
        self, name: str, split: str, shots: int | None, split_seed: int, image_size: int
    ) -> ImageSet:
        if split not in ("train", "test"):
            raise UserError(f"split must be 'train' or 'test', got {split!r}")
        spec = self.spec(name)
        pool = self._pool(spec, split, shots if split == "train" else None, split_seed)
        stem = f"{split}-{f'{shots}shot' if shots and split == 'train' else 'all'}-seed{split_seed}"
        digest, manifest = write_manifest(pool, self.cache_root / "manifests" / name, stem)
        self.manifests[f"{name}/{split}"] = str(manifest)
        images, labels = decoded(
            pool,
            entry_dir(self.cache_root, name, split, digest, image_size),
            image_size,
            self.workers,
        )
        return ImageSet(images, labels, digest)

    # --- model and reference data -------------------------------------------------------
    def backbone(self, device: torch.device) -> Backbone:
        from cl_bench.models.openclip import load_backbone

        return load_backbone(self.model, self.pretrained, device)

    def missing_requirements(self, requires: frozenset[str]) -> list[str]:
        """Reference data is checked up front: a folder and a caption file, before any data loads."""
        if "reference_data" not in requires:
            return []
        missing = []
        if self.reference_images is None:
            missing.append(
                "reference images for distillation: set --reference-images DIR (e.g. an ImageNet subset)"
            )
        elif not Path(self.reference_images).expanduser().is_dir():
            missing.append(f"--reference-images {self.reference_images}: no such folder")
        if self.reference_captions is None:
            missing.append(
                "reference captions for distillation: set --reference-captions FILE (one caption per line)"
            )
        elif not Path(self.reference_captions).is_file():
            missing.append(f"--reference-captions {self.reference_captions}: no such file")
        return missing

    def reference_data(
        self, num_images: int, num_captions: int, seed: int, image_size: int
    ) -> tuple[np.ndarray, list[str]]:
        """Images from --reference-images (a folder, searched recursively) and lines of --reference-captions."""
        if self.reference_images is None or self.reference_captions is None:
            raise UserError(
                "the real world needs reference data for distillation learners (ZSCL: an ImageNet subset and a caption list); set --reference-images DIR and --reference-captions FILE"
            )
        folder = Path(self.reference_images).expanduser()
        if not folder.is_dir():
            raise UserError(f"--reference-images {folder}: no such folder")
        if not self.reference_captions.is_file():
            raise UserError(
                f"--reference-captions {self.reference_captions}: no such file (one caption per line)"
            )
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in sources.IMAGE_SUFFIXES)
        captions = [
            c.strip() for c in self.reference_captions.read_text().splitlines() if c.strip()
        ]
        if len(files) < num_images or len(captions) < num_captions:
            raise UserError(
                f"reference data too small: {len(files)} images / {len(captions)} captions, need {num_images} / {num_captions}; point --reference-images/--reference-captions at more"
            )
        rng = np.random.default_rng(seed)
        picked = sorted(rng.choice(len(files), size=num_images, replace=False).tolist())
        pool = sources.file_pool(
            [files[i] for i in picked], np.zeros(num_images, dtype=np.int64), folder
        )
        digest, _ = write_manifest(
            pool, self.cache_root / "manifests" / "reference", f"images-seed{seed}"
        )
        images, _ = decoded(
            pool,
            entry_dir(self.cache_root, "reference", "images", digest, image_size),
            image_size,
            self.workers,
        )
        chosen = rng.choice(len(captions), size=num_captions, replace=False)
        return np.asarray(images), [captions[i] for i in chosen]

    def describe(self) -> dict[str, Any]:
        files = {
            n: hashlib.sha256(self.spec(n).path.read_bytes()).hexdigest()[:16]
            for n in self.dataset_names()
        }
        split_files = {
            n: str(p) for n in self.dataset_names() if (p := self.split_file(n)) and p.is_file()
        }
        return {
            "world": self.name,
            "model": self.model,
            "pretrained": self.pretrained,
            "data_root": str(self.data_root),
            "dataset_protocol": self.dataset_protocol,
            "dataset_versions": {n: self.spec(n).version for n in self.dataset_names()},
            "dataset_file_sha256": files,
            "split_files": split_files,
            "manifests": dict(self.manifests),
        }

    def train_view(self, name: str, shots: int | None, split_seed: int, image_size: int) -> Any:
        """--augment rrc: the training split's originals (at most augment.view_size px a side)
        and their sizes, decoded once into the cache beside the split (cache.train_view)."""
        from cl_bench.data.real.cache import train_view

        split = self.load_split(name, "train", shots, split_seed, image_size)
        pool = self._pool(self.spec(name), "train", shots, split_seed)
        return train_view(pool, self.cache_root, name, split.ids_hash, image_size, self.workers)
