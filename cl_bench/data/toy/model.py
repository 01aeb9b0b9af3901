"""The tiny toy CLIP: an open_clip model config (toy-clip.json) and the shipped weights.

Loading goes through `open_clip.create_model`, so learners and adapters see a normal open_clip
CLIP (nn.MultiheadAttention blocks, open_clip's own BPE tokenizer, vocab 49408). The config is
registered on first use, never at import.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cl_bench.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cl_bench.models.backbone import Backbone

MODEL_NAME = "toy-clip"
CONFIG_PATH = Path(__file__).resolve().parent / f"{MODEL_NAME}.json"
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "toy_clip.safetensors"
RECORD_PATH = WEIGHTS_PATH.with_suffix(".json")
IMAGE_SIZE_PX = 32
# The renderer's colours live in [0, 1] around mid-grey; one fixed normalisation for all domains.
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
DEFAULT_TOY_MODEL = "small"


@dataclass(frozen=True)
class ToyModel:
    """One toy CLIP size (`--toy-model`): its open_clip config and where its weights live.

    `small` ships with the package (the default; every test and committed toy leaderboard uses
    it). Larger sizes exist to test what the toy's conclusions owe to its size (issue 25); their
    weights are too big for the repository, so `clbench toy pretrain --model M` writes them to
    the cache, from the same recipe.
    """

    key: str
    config_name: str  # the open_clip model name, = the config file's stem
    shipped: bool  # weights inside the package (else in $CLBENCH_CACHE/toy/models/)

    @property
    def config_path(self) -> Path:
        return Path(__file__).resolve().parent / f"{self.config_name}.json"

    @property
    def pretrain_command(self) -> str:
        """The command that (re-)creates this size's weights where runs look for them."""
        return "clbench toy pretrain" + (
            "" if self.key == DEFAULT_TOY_MODEL else f" --model {self.key}"
        )

    @property
    def weights_path(self) -> Path:
        if self.shipped:
            return WEIGHTS_PATH
        return toy_cache_root() / "models" / f"{self.config_name.replace('-', '_')}.safetensors"


# small: width 128, 4 + 3 layers, 7.8 M parameters; base: width 256, 18.4 M, 4.0x the step FLOPs
TOY_MODELS = {
    "small": ToyModel("small", MODEL_NAME, shipped=True),
    "base": ToyModel("base", "toy-clip-base", shipped=False),
}


def toy_model(key: str) -> ToyModel:
    if key not in TOY_MODELS:
        raise UserError(f"unknown toy model {key!r}; valid: {', '.join(TOY_MODELS)}")
    return TOY_MODELS[key]


def toy_cache_root() -> Path:
    """The toy world's part of the cache: generated splits, the non-shipped weights."""
    from cl_bench.data.world import cache_root

    return cache_root() / "toy"


def register_config(spec: ToyModel = TOY_MODELS[DEFAULT_TOY_MODEL]) -> None:
    """Make a toy config known to open_clip's factory (idempotent)."""
    import open_clip

    if spec.config_name not in open_clip.list_models():
        open_clip.add_model_config(spec.config_path)


def create_toy_clip(spec: ToyModel = TOY_MODELS[DEFAULT_TOY_MODEL]) -> nn.Module:
    """A randomly initialised toy CLIP (pre-training starts here)."""
    import open_clip

    register_config(spec)
    # open_clip warns "initialized randomly" here; misleading, since the toy weights load next.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        return open_clip.create_model(spec.config_name, pretrained=None)
    finally:
        logging.disable(previous)


def toy_tokenizer(spec: ToyModel = TOY_MODELS[DEFAULT_TOY_MODEL]):
    """open_clip's BPE tokenizer at the config's context length (the same for every size)."""
    import open_clip

    register_config(spec)
    return open_clip.get_tokenizer(spec.config_name)


def weights_sha256(path: Path = WEIGHTS_PATH) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def missing_weights_message(
    path: Path = WEIGHTS_PATH, spec: ToyModel = TOY_MODELS[DEFAULT_TOY_MODEL]
) -> str:
    what = "re-create them" if spec.shipped else "create them (same recipe; see docs/toy-world.md)"
    return (
        f"toy CLIP weights ({spec.key}) not found at {path}; {what} with `{spec.pretrain_command}`"
    )


def read_record(path: Path = RECORD_PATH) -> dict:
    """The JSON written beside the weights: how they were made and their zero-shot accuracies."""
    if not path.is_file():
        raise UserError(
            f"toy weights record not found at {path}; re-create it with `clbench toy pretrain`"
        )
    return json.loads(path.read_text())


def load_toy_backbone(
    device: torch.device,
    path: Path = WEIGHTS_PATH,
    spec: ToyModel = TOY_MODELS[DEFAULT_TOY_MODEL],
) -> Backbone:
    """The shipped (or a given) toy CLIP as a Backbone, float32, on `device`, in eval mode."""
    from safetensors.torch import load_file

    from cl_bench.models.backbone import Backbone

    if not path.is_file():
        raise UserError(missing_weights_message(path, spec))
    model = create_toy_clip(spec)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "attn_mask"]
        problem = (
            f"missing {missing[:3]}, unexpected {unexpected[:3]}" if missing or unexpected else ""
        )
    except RuntimeError as exc:  # same names, other shapes: e.g. the small weights for base
        problem = str(exc).splitlines()[-1].strip()
    if problem:
        raise UserError(
            f"{path} does not match the {spec.config_name} config ({problem}); re-create it with `{spec.pretrain_command}`"
        )
    model.to(device).eval()
    return Backbone(
        model=model,
        tokenizer=toy_tokenizer(spec),
        image_size=IMAGE_SIZE_PX,
        mean=MEAN,
        std=STD,
        name=spec.config_name,
        pretrained=f"toy-{weights_sha256(path)[:12]}",
    )


def save_weights(model: nn.Module, path: Path, record: dict) -> str:
    """fp16 safetensors + the JSON record beside it; returns the weights' sha256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu").half().contiguous()
        for k, v in model.state_dict().items()
        if k != "attn_mask"
    }
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    sha = weights_sha256(path)
    record = {**record, "weights_sha256": sha, "weights_file": path.name}
    rec_path = path.with_suffix(".json")
    rec_tmp = rec_path.with_suffix(".json.tmp")
    rec_tmp.write_text(json.dumps(record, indent=2) + "\n")
    rec_tmp.replace(rec_path)
    return sha
