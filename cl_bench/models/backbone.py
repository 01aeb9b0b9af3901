"""A CLIP backbone as the engine and learners see it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
    _stats: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )  # normalize's mean/std tensors per (device, mean, std)

    @property
    def width(self) -> int:
        """Transformer width of the vision tower (LoRA ranks scale with it)."""
        visual: Any = self.model.visual  # open_clip towers: attributes nn.Module cannot type
        return int(visual.transformer.width)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] uint8 -> [B, 3, H, W] float, normalized with the model's mean/std.

        (x / 255 - mean) / std in place on the one float copy: the same fp32 operations as
        out-of-place, so the same bits, with one allocation instead of three (2x faster at
        224 px on CPU). mean/std are kept per device: building them on CUDA at every call
        would be a blocking host-to-device copy per batch. They are made outside inference
        mode, so an evaluation's first call leaves tensors that training may use too."""
        x = images_uint8.permute(0, 3, 1, 2).float()
        key = (x.device, self.mean, self.std)
        stats = self._stats.get(key)
        if stats is None:
            with torch.inference_mode(False):
                stats = (
                    torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1),
                    torch.tensor(self.std, device=x.device).view(1, 3, 1, 1),
                )
            self._stats[key] = stats
        mean, std = stats
        return x.div_(255.0).sub_(mean).div_(std)
