"""Which data world serves a run; worlds are imported lazily, on lookup."""

from __future__ import annotations

import importlib

from cl_bench.data.world import DataWorld
from cl_bench.engine.config import WORLDS, RunConfig
from cl_bench.errors import UserError

WORLD_CLASSES = {
    "toy": "cl_bench.data.toy.world:ToyWorld",
    "real": "cl_bench.data.real.world:RealWorld",
}


def world_class(name: str) -> type[DataWorld]:
    """The DataWorld class registered under `name`, imported on demand."""
    if name not in WORLD_CLASSES:
        raise UserError(f"unknown world {name!r}; valid worlds: {', '.join(WORLDS)}")
    module, _, attr = WORLD_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def get_world(cfg: RunConfig) -> DataWorld:
    cls = world_class(cfg.world)
    if cfg.world == "real":
        return cls(
            model=cfg.model,
            pretrained=cfg.pretrained,
            data_root=cfg.data_root,
            split_dir=cfg.split_dir,
            reference_images=cfg.reference_images,
            reference_captions=cfg.reference_captions,
        )
    real_only = (
        "model",
        "pretrained",
        "data_root",
        "split_dir",
        "reference_images",
        "reference_captions",
    )
    given = [f"--{k.replace('_', '-')}" for k in real_only if getattr(cfg, k)]
    if given:
        raise UserError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --world real only; "
            "the toy world ships its own CLIP and data"
        )
    return cls()
