"""How close `--augment rrc` is to the references' RandomResizedCrop (docs/real-data.md).

For each image (photos given on the command line, else matplotlib's sample photo, plus 1/f
noise images with natural-image spectra) resized to typical dataset sizes, draws boxes with
cl-bench's sampler and compares, per box:

    reference  torchvision F.resized_crop(PIL original, box, 224, BICUBIC)  (what RandomResizedCrop does)
    cl-bench   the box mapped into the stored training view (side S), cropped and resized
               batched (cl_bench.data.augment.resized_crops), for several S
    shift-1    the reference with the box moved by one original pixel (a scale for the numbers)
    centre     the crop drawn inside the eval cache's 224 centre crop instead (what a crop of
               the stored eval images would give)

and prints the mean absolute difference in 8-bit levels (0-255) and the share of pixels
more than 2 levels apart.  python benchmarks/augment_fidelity.py [photo ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from cl_bench.data.augment import resized_crops, sample_boxes, view_size
from cl_bench.data.real.cache import clip_preprocess, train_view_pixels

SIZE = 224
SIDES = (224, 256, 320, 448)
SHAPES = ((28, 28), (32, 32), (64, 64), (300, 200), (500, 375), (512, 512), (640, 480), (1000, 667))
BOXES = 24


def pink_noise(seed: int, side: int = 1024) -> Image.Image:
    """Colour 1/f noise: the amplitude spectrum of natural images."""
    rng = np.random.default_rng(seed)
    f = np.sqrt(np.fft.fftfreq(side)[:, None] ** 2 + np.fft.fftfreq(side)[None, :] ** 2)
    f[0, 0] = 1.0
    chans = []
    for _ in range(3):
        spec = (rng.normal(size=(side, side)) + 1j * rng.normal(size=(side, side))) / f
        x = np.real(np.fft.ifft2(spec))
        chans.append((x - x.mean()) / x.std())
    arr = np.clip(128 + 40 * np.stack(chans, -1), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def reference(img: Image.Image, box: list[int]) -> np.ndarray:
    return np.asarray(F.resized_crop(img, *box, [SIZE, SIZE], InterpolationMode.BICUBIC))


def measure(img: Image.Image, seed: int) -> dict[str, tuple[float, float]]:
    w, h = img.size
    boxes = sample_boxes(torch.Generator().manual_seed(seed), np.array([[w, h]] * BOXES))
    ref = np.stack([reference(img, b) for b in boxes.tolist()]).astype(np.int16)
    out = {}

    def score(name: str, got: np.ndarray) -> None:
        d = np.abs(got.astype(np.int16) - ref)
        out[name] = (float(d.mean()), float((d > 2).mean()))

    for side in SIDES:
        stored, row = train_view_pixels(img, side)
        pixels = np.zeros((BOXES, side, side, 3), dtype=np.uint8)
        pixels[:, : stored.shape[0], : stored.shape[1]] = stored
        sizes = np.array([row] * BOXES)
        crops = resized_crops(torch.from_numpy(pixels), boxes, sizes[:, :2], sizes[:, 2:], SIZE)
        score(f"S={side}", crops.numpy())
    shifted = [[t, min(j + 1, w - bw), bh, bw] for t, j, bh, bw in boxes.tolist()]
    score("shift-1", np.stack([reference(img, b) for b in shifted]))
    centre = Image.fromarray(clip_preprocess(img, SIZE))
    cboxes = sample_boxes(torch.Generator().manual_seed(seed), np.array([[SIZE, SIZE]] * BOXES))
    score("centre", np.stack([reference(centre, b) for b in cboxes.tolist()]))
    return out


def main(paths: list[str]) -> None:
    sources = [Image.open(p).convert("RGB") for p in paths]
    if not paths:
        import matplotlib

        photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        sources = [Image.open(photo).convert("RGB")]
    sources += [pink_noise(s) for s in range(2)]
    print(f"view side for {SIZE} px: {view_size(SIZE)}; {BOXES} boxes per image and size")
    print(
        "original  "
        + "  ".join(f"{k:>13}" for k in [*(f"S={s}" for s in SIDES), "shift-1", "centre"])
    )
    for shape in SHAPES:
        rows = [
            measure(src.resize(shape, Image.Resampling.BICUBIC), i) for i, src in enumerate(sources)
        ]
        keys = rows[0].keys()
        cells = [
            f"{np.mean([r[k][0] for r in rows]):6.2f} {100 * np.mean([r[k][1] for r in rows]):5.1f}%"
            for k in keys
        ]
        print(f"{shape[0]:>4}x{shape[1]:<4} " + "  ".join(cells))
    print("cells: mean |difference| in 8-bit levels, share of pixels more than 2 levels apart")


if __name__ == "__main__":
    main(sys.argv[1:])
