"""A CLIP backbone as the engine and learners see it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn


class CLIPModel(Protocol):
    """What the harness calls on a CLIP model (open_clip's CLIP, the toy CLIP) besides nn.Module."""

    logit_scale: torch.Tensor

    def encode_image(self, image: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, text: torch.Tensor) -> torch.Tensor: ...


def as_clip(model: nn.Module) -> CLIPModel:
    """`model` typed as a `CLIPModel`. Only a cast: torch's stubs type every attribute of an
    nn.Module as `Tensor | Module`, so `model.encode_image(...)` would not type-check."""
    return cast(CLIPModel, model)


@dataclass
class Backbone:
    model: nn.Module  # open_clip CLIP: encode_image, encode_text, logit_scale
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str  # e.g. "ViT-B-16" or "toy-clip"
    pretrained: str  # weights tag, e.g. "openai" or the toy weights hash

    @property
    def width(self) -> int:
        """Transformer width of the vision tower (LoRA ranks scale with it)."""
        visual: Any = self.model.visual  # open_clip towers: attributes nn.Module cannot type
        return int(visual.transformer.width)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] uint8 -> [B, 3, H, W] float, normalized with the model's mean/std."""
        x = images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
