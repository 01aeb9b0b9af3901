"""Which data world serves a run; worlds are imported lazily, on lookup (`WORLDS`).

This module knows nothing of the engine: `get_world` reads the few run options it needs from
any object that has them (the engine passes its RunConfig).
"""

from __future__ import annotations

from typing import Any, Protocol

from cl_bench.api.registry import Registry
from cl_bench.data.toy.model import DEFAULT_TOY_MODEL
from cl_bench.data.world import DataWorld
from cl_bench.errors import UserError

# The built-in worlds, in the order listings and messages show them (toy first).
BUILTIN_WORLDS = {
    "toy": "cl_bench.data.toy.world:ToyWorld",
    "real": "cl_bench.data.real.world:RealWorld",
}
WORLDS: Registry[DataWorld] = Registry(
    "world",
    base=DataWorld,
    base_hint="cl_bench.data.world.DataWorld",
    targets=BUILTIN_WORLDS,
    decorator="WORLDS.register",
    unknown="unknown world {name!r}{hint}; valid worlds: {valid}",
    hint=" (did you mean {close}?)",
    sort=False,
)

# RunConfig fields that are arguments of RealWorld; the toy world ships its own CLIP and data.
REAL_WORLD_OPTIONS = (
    "model",
    "pretrained",
    "data_root",
    "split_dir",
    "reference_images",
    "reference_captions",
)


class WorldOptions(Protocol):
    """What `get_world` reads from a run's configuration (RunConfig has these fields)."""

    world: str
    toy_model: str
    model: str | None
    pretrained: str | None
    data_root: str | None
    split_dir: str | None
    reference_images: str | None
    reference_captions: str | None


def world_names() -> list[str]:
    """Every world: the built-ins in their order (toy first), then registered ones."""
    return WORLDS.names()


def world_class(name: str) -> type[DataWorld]:
    """The DataWorld class registered under `name`, imported on demand."""
    return WORLDS.get(name)


def get_world(cfg: WorldOptions | Any) -> DataWorld:
    cls = world_class(cfg.world)
    options = {k: getattr(cfg, k) for k in REAL_WORLD_OPTIONS}
    if cfg.world != "toy" and cfg.toy_model != DEFAULT_TOY_MODEL:
        raise UserError(f"--toy-model applies to --world toy only; drop it for --world {cfg.world}")
    if cfg.world == "real":
        return cls(**options)
    given = [f"--{k.replace('_', '-')}" for k, v in options.items() if v]
    if given:
        raise UserError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --world real only; "
            "the toy world ships its own CLIP and data"
        )
    if cfg.world == "toy":
        return cls(model=cfg.toy_model)  # type: ignore[call-arg]
    return cls()
