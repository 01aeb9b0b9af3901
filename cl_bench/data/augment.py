"""Training augmentation as the reference pipelines do it: RandomResizedCrop(scale 0.9–1.0).

CoDyRA trains with open_clip's `image_transform(is_train=True)` and ZSCL with
`clip/clip.py::_transform(n_px, is_train=True)`; both are
`RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=BICUBIC)` -> RGB -> ToTensor ->
Normalize (ratio: torchvision's default (3/4, 4/3); no colour jitter, no grayscale, no flip).
The crop box is drawn in the *original* image's pixels and then resized to size x size.

cl-bench stores decoded images, so a world that supports the crop keeps a second copy of its
training split, a `TrainView`: each original image at most `S` px a side (an image that fits
is stored as it is; a larger one is resized to min(side, S) per axis), top-left in an S x S
array, with its original (width, height). At batch time `sample_box` draws the box in the
original's coordinates with torchvision's algorithm (`RandomResizedCrop.get_params`, the same
draws from an explicit generator), and `resized_crops` maps it into the stored copy and
resamples it to the backbone's size with PIL's bicubic filter (a = -0.5, widened by the
down-scaling factor as PIL antialiases, truncated at the crop's edges as PIL's crop-then-
resize does), batched as two matrix products on the training device. Where the view holds
the original unscaled (every original up to S px a side, and the toy world's images) this is
the reference's crop and resize up to float-vs-fixed-point rounding; docs/real-data.md
("Training augmentation") gives the measured gap for larger originals.

Draws are seeded by (run seed, task index, step) alone, so the batch at step k is the same
whether a run started at step 0 or resumed there, and the batch order (`BatchStream`) is
untouched. Runs without augmentation never reach this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cl_bench.errors import UserError

SCALE = (0.9, 1.0)  # open_clip AugmentationCfg.scale; ZSCL _transform
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision RandomResizedCrop's default (neither sets one)
MODES = ("auto", "none", "rrc")
RESOLVED = ("none", "rrc")
VIEW_FACTOR = 8 / 7  # S = ceil(image_size * 8/7 / 8) * 8: 256 for 224 (docs/real-data.md)
_STREAM_TAG = 0x52524331  # "RRC1": keeps the crop draws apart from every other seeded stream


def view_size(image_size: int) -> int:
    """The side S of a stored training view: 256 for 224 px (>= image_size / 0.9, so the
    smallest crop a 0.9 area fraction allows still maps to at least image_size view pixels)."""
    return int(math.ceil(image_size * VIEW_FACTOR / 8) * 8)


@dataclass
class TrainView:
    """A training split as the crop needs it (row i = image i of the split's ImageSet)."""

    images: np.ndarray  # uint8 [N, S, S, 3]; image i fills [:extent[i,1], :extent[i,0]]
    original: np.ndarray  # int [N, 2]: the original image's (width, height)
    extent: np.ndarray  # int [N, 2]: the (width, height) it occupies in `images`
    ids_hash: str  # the split's ids hash: a view belongs to exactly one split

    def __len__(self) -> int:
        return int(self.original.shape[0])


def whole_image_view(images: np.ndarray, ids_hash: str) -> TrainView:
    """Stored images that are themselves the originals (the toy world): crop them directly."""
    n, h, w = images.shape[:3]
    return TrainView(
        images,
        np.tile(np.array([w, h], dtype=np.int64), (n, 1)),
        np.tile(np.array([w, h], dtype=np.int64), (n, 1)),
        ids_hash,
    )


# ------------------------------------------------------------------------------ the box
def sample_box(
    generator: torch.Generator,
    width: int,
    height: int,
    scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop: `RandomResizedCrop.get_params`, step for step
    (ten tries of area x aspect drawn in float32, then the centre-crop fallback), with the
    draws taken from `generator` instead of torch's global generator."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(
            torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=generator)
        ).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            j = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def step_generator(seed: int, task_index: int, step: int) -> torch.Generator:
    """The crop draws of one step: a function of (seed, task, step) only (exact resume)."""
    state = np.random.SeedSequence([_STREAM_TAG, seed, task_index, step]).generate_state(
        1, np.uint64
    )
    return torch.Generator().manual_seed(int(state[0]))


def sample_boxes(generator: torch.Generator, original: np.ndarray) -> np.ndarray:
    """int64 [B, 4] (top, left, height, width) boxes for originals of (width, height) [B, 2],
    drawn one image after another as a reference loader applies the transform."""
    return np.array(
        [sample_box(generator, int(w), int(h)) for w, h in original.tolist()], dtype=np.int64
    ).reshape(-1, 4)


# ------------------------------------------------------------------------------ resampling
def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """PIL's bicubic kernel (a = -0.5), support 2."""
    a = -0.5
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def _axis_weights(
    start: torch.Tensor, length: torch.Tensor, side: int, out: int, device: torch.device
) -> torch.Tensor:
    """[B, out, side] weights resampling the span [start, start + length) of each row (in
    stored-view pixels, fractional) to `out` pixels as PIL's resize of the cropped span does."""
    scale = (length / out).view(-1, 1, 1)
    centre = start.view(-1, 1, 1) + (torch.arange(out, device=device).view(1, -1, 1) + 0.5) * scale
    filter_scale = scale.clamp(min=1.0)
    pixel = torch.arange(side, device=device, dtype=start.dtype).view(1, 1, -1) + 0.5
    weights = _bicubic((pixel - centre) / filter_scale)
    inside = (pixel >= start.view(-1, 1, 1)) & (pixel < (start + length).view(-1, 1, 1))
    weights = weights * inside
    total = weights.sum(dim=-1, keepdim=True)
    return weights / torch.where(total == 0, torch.ones_like(total), total)


def resized_crops(
    pixels: torch.Tensor,
    boxes: np.ndarray,
    original: np.ndarray,
    extent: np.ndarray,
    size: int,
) -> torch.Tensor:
    """uint8 [B, size, size, 3] crops of stored views `pixels` (uint8 [B, S, S, 3], on the
    training device) for `boxes` (top, left, height, width) in the originals' pixels."""
    device = pixels.device
    side = pixels.shape[1]
    f = torch.float64 if device.type == "cpu" else torch.float32
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=f, device=device)  # noqa: E731
    sx = as_t(extent[:, 0]) / as_t(original[:, 0])
    sy = as_t(extent[:, 1]) / as_t(original[:, 1])
    top, left, h, w = (as_t(boxes[:, k]) for k in range(4))
    wx = _axis_weights(left * sx, w * sx, side, size, device)  # [B, size, S]
    wy = _axis_weights(top * sy, h * sy, side, size, device)
    x = pixels.permute(0, 3, 1, 2).to(f)  # [B, 3, S, S]
    rows = torch.matmul(x, wx.transpose(1, 2).unsqueeze(1))  # horizontal pass: [B, 3, S, size]
    rows = rows.round_().clamp_(0, 255)  # PIL keeps the horizontal pass as 8-bit pixels
    out = torch.matmul(wy.unsqueeze(1), rows)  # vertical pass: [B, 3, size, size]
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ------------------------------------------------------------------------------ the option
@dataclass(frozen=True)
class Augmentation:
    """A run's training augmentation: `mode` is what `--augment` resolved to for its world."""

    requested: str
    mode: str  # "none" | "rrc"

    @classmethod
    def resolve(cls, requested: str, world: Any) -> Augmentation:
        """`auto` is the world's `default_augment` (none where a world declares none)."""
        if requested not in MODES:
            raise UserError(f"--augment {requested!r}: valid values are {', '.join(MODES)}")
        mode = getattr(world, "default_augment", "none") if requested == "auto" else requested
        if mode not in RESOLVED:
            raise ValueError(f"{type(world).__name__}.default_augment is {mode!r}, not none|rrc")
        if mode == "rrc" and not callable(getattr(world, "train_view", None)):
            raise UserError(
                f"--augment rrc: the {world.name} world stores no training views to crop; use --augment none"
            )
        return cls(requested, mode)

    def view(
        self, world: Any, name: str, shots: int | None, split_seed: int, image_size: int
    ) -> TrainView | None:
        """The task's training view (None without augmentation)."""
        if self.mode == "none":
            return None
        view: TrainView = world.train_view(name, shots, split_seed, image_size)
        return view


class RandomResizedCrops:
    """Per-step crops of one task's batches from its training view."""

    def __init__(self, view: TrainView, seed: int, task_index: int, size: int) -> None:
        self.view = view
        self.seed = seed
        self.task_index = task_index
        self.size = size

    def boxes(self, indices: np.ndarray, step: int) -> np.ndarray:
        """Boxes for a whole (global) batch: the same on every torchrun rank."""
        generator = step_generator(self.seed, self.task_index, step)
        return sample_boxes(generator, self.view.original[indices])

    def pixels(self, indices: np.ndarray, boxes: np.ndarray, device: torch.device) -> torch.Tensor:
        stored = torch.from_numpy(np.ascontiguousarray(self.view.images[indices]))
        if device.type == "cuda":
            stored = stored.pin_memory().to(device, non_blocking=True)
        return resized_crops(
            stored, boxes, self.view.original[indices], self.view.extent[indices], self.size
        )
