"""The one place that loads real open_clip backbones (ViT-B-16 / openai by default).

Weights come from the local Hugging Face hub cache (or a checkpoint file); a run never
downloads silently: `weights_problem` finds missing weights before training starts, and
`fetch_weights` (used by `clbench data prepare --weights`) is the explicit download.
Random weights only when asked for by name: pretrained="none".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cl_bench.errors import UserError

if TYPE_CHECKING:
    import torch

    from cl_bench.models.backbone import Backbone

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"
RANDOM_WEIGHTS = "none"
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def resolve_model_name(model_name: str) -> str:
    """An open_clip config name, or a path to a model config JSON (registered under its file stem)."""
    import open_clip

    if model_name.endswith(".json"):
        path = Path(model_name)
        if not path.is_file():
            raise UserError(
                f"--model {model_name}: no such model config file; give an open_clip model name or an existing .json config"
            )
        open_clip.add_model_config(path)
        model_name = path.stem
    if model_name not in open_clip.list_models():
        close = [
            m for m in open_clip.list_models() if model_name.lower().split("-")[0] in m.lower()
        ][:8]
        raise UserError(
            f"unknown open_clip model {model_name!r}; close matches: {', '.join(close) or 'none'} (see open_clip.list_models())"
        )
    return model_name


def _hf_location(model_name: str, pretrained: str) -> tuple[str, list[str]] | None:
    """(repo_id, candidate filenames) of a tag's weights on the HF hub, None if it has no hub entry."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise UserError(
            f"--pretrained {pretrained!r} is not a weights tag of {model_name}; valid: {', '.join(tags) or 'none'}, '{RANDOM_WEIGHTS}' (random init) or a checkpoint file"
        )
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    repo_id, filename = os.path.split(hub)
    return repo_id, [filename] if filename else list(_HF_WEIGHT_FILES)


def weights_problem(model_name: str, pretrained: str) -> str | None:
    """One line naming missing weights and the fix, or None when they are on disk (no network)."""
    if pretrained == RANDOM_WEIGHTS:
        return None
    if Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        return (
            None
            if Path(pretrained).is_file()
            else f"weights file {pretrained} not found; fix: pass an existing checkpoint to --pretrained"
        )
    model_name = resolve_model_name(model_name)
    loc = _hf_location(model_name, pretrained)
    fix = f"clbench data prepare --weights --model {model_name} --pretrained {pretrained} (on a machine with internet; then copy $HF_HOME/hub here)"
    if loc is None:
        return f"weights {model_name}/{pretrained} have no Hugging Face hub entry and cannot be found offline; fix: download the checkpoint and pass its path to --pretrained"
    from huggingface_hub import try_to_load_from_cache

    repo_id, files = loc
    for filename in files:
        hit = try_to_load_from_cache(repo_id, filename)
        if isinstance(hit, str) and Path(hit).is_file():
            return None
    return f"weights {model_name}/{pretrained} are not in the Hugging Face cache (looked for {repo_id}/{files[0]}); fix: {fix}"


def fetch_weights(model_name: str, pretrained: str) -> str:
    """Download a tag's weights into the HF cache (needs internet); returns the local file."""
    import open_clip

    model_name = resolve_model_name(model_name)
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        _hf_location(model_name, pretrained)  # raises the UserError listing valid tags
    try:
        return str(open_clip.download_pretrained(cfg))
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise UserError(
            f"could not download {model_name}/{pretrained} ({type(exc).__name__}: {str(exc)[:200]}); check the network and HF_HUB_OFFLINE"
        ) from None


def load_backbone(
    model_name: str = DEFAULT_MODEL,
    pretrained: str = DEFAULT_PRETRAINED,
    device: torch.device | str = "cpu",
) -> Backbone:
    """An open_clip CLIP with its tokenizer and preprocessing facts, weights from disk only."""
    import open_clip
    import torch

    from cl_bench.models.backbone import Backbone

    model_name = resolve_model_name(model_name)
    problem = weights_problem(model_name, pretrained)
    if problem:
        raise UserError(problem)
    load_from = None if pretrained == RANDOM_WEIGHTS else pretrained
    try:
        model = open_clip.create_model(
            model_name, pretrained=load_from, device=torch.device(device)
        )
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"loading {model_name}/{pretrained} failed ({type(exc).__name__}: {str(exc)[:200]}); fix: clbench data prepare --weights --model {model_name} --pretrained {pretrained}"
        ) from None
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(float(x) for x in pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(x) for x in pp.get("std", open_clip.OPENAI_DATASET_STD))
    tokenizer = open_clip.get_tokenizer(model_name)
    return Backbone(model, tokenizer, image_size, mean, std, model_name, pretrained)  # type: ignore[arg-type]
