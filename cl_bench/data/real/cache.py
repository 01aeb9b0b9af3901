"""The decode cache: each split decoded and resized once, kept as a memory-mapped uint8 array.

Key: dataset / split / ids hash / image size, so every task and evaluation that needs the
same images reuses the same file. `train_view` keeps a second entry per training split for
`--augment rrc` (cl_bench.data.augment): each original image at most S px a side, with its
original size, so a crop can be drawn in the original's coordinates as the references do. Built in independent chunks by a thread pool (PIL decodes
and resizes without the GIL); finished chunks are recorded, so an interrupted build resumes;
a file lock keeps two runs from building the same entry at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cl_bench.data.augment import TrainView, view_size
from cl_bench.data.real.sources import Pool

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)
CHUNK_IMAGES = 512
COMPLETE = "complete"


def clip_preprocess(img: Image.Image, image_size: int) -> np.ndarray:
    """CLIP's eval transform without normalisation: bicubic resize of the shorter side, centre crop."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    img = F.resize(img, image_size, interpolation=InterpolationMode.BICUBIC)
    img = F.center_crop(img, [image_size, image_size])
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def entry_dir(cache_root: Path, dataset: str, split: str, ids_hash: str, image_size: int) -> Path:
    return cache_root / "decoded" / dataset / f"{split}-{ids_hash}-{image_size}px"


def decoded(
    pool: Pool, entry: Path, image_size: int, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, S, S, 3] (copy-on-write memmap) and int64 labels [N] for a pool, decoding on first use."""
    if not (entry / COMPLETE).exists():
        with _locked(entry.with_name(entry.name + ".lock")):
            if not (entry / COMPLETE).exists():
                _build(pool, entry, image_size, workers or min(8, os.cpu_count() or 1))
    images = np.load(
        entry / "images.npy", mmap_mode="c"
    )  # copy-on-write: writable views, the file never changes
    labels = np.load(entry / "labels.npy")
    if images.shape != (len(pool), image_size, image_size, 3) or not np.array_equal(
        labels, pool.labels
    ):
        raise RuntimeError(f"decode cache entry {entry} does not match its key; delete it")
    return images, labels


def train_view_pixels(img: Image.Image, side: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """An original as a training view: unchanged where it fits in side x side, else resized
    (bicubic) to at most `side` per axis. Returns its pixels [stored height, stored width, 3]
    and (width, height, stored width, stored height)."""
    from PIL import Image as PILImage

    img = img.convert("RGB")
    w, h = img.size
    ew, eh = min(w, side), min(h, side)
    if (ew, eh) != (w, h):
        img = img.resize((ew, eh), PILImage.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8), (w, h, ew, eh)


def view_entry_dir(cache_root: Path, dataset: str, split: str, ids_hash: str, side: int) -> Path:
    return cache_root / "decoded" / dataset / f"{split}-{ids_hash}-view{side}px"


def train_view(
    pool: Pool, cache_root: Path, dataset: str, ids_hash: str, image_size: int,
    workers: int | None = None,
) -> TrainView:  # fmt: skip
    """The training view of a split for crops to `image_size` (built once, like `decoded`).

    Images sit top-left in squares of the split's largest stored side (at most
    `view_size(image_size)`), so a split of small originals (MNIST, CIFAR) stays small."""
    side = view_size(image_size)
    entry = view_entry_dir(cache_root, dataset, "train", ids_hash, side)
    if not (entry / COMPLETE).exists():
        with _locked(entry.with_name(entry.name + ".lock")):
            if not (entry / COMPLETE).exists():
                _build(
                    pool, entry, side, workers or min(8, os.cpu_count() or 1),
                    lambda img: train_view_pixels(img, side),
                )  # fmt: skip
    images = np.load(entry / "images.npy", mmap_mode="c")
    sizes = np.load(entry / "sizes.npy").astype(np.int64)
    labels = np.load(entry / "labels.npy")
    n, h, w = images.shape[:3]
    if n != len(pool) or h != w or h > side or not np.array_equal(labels, pool.labels):
        raise RuntimeError(f"training view cache entry {entry} does not match its key; delete it")
    return TrainView(images, sizes[:, :2], sizes[:, 2:], ids_hash)


Decode = Callable[["Image.Image"], tuple[np.ndarray, tuple[int, ...]]]


def _build(
    pool: Pool, entry: Path, image_size: int, workers: int, decode: Decode | None = None
) -> None:
    """Decode a pool into `entry` in resumable chunks: CLIP's eval transform, or `decode`
    (the training views), which returns an image of at most image_size a side, stored
    top-left, and a row of sizes kept in sizes.npy; the squares shrink to the largest one."""
    partial = entry.with_name(entry.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    shape = (len(pool), image_size, image_size, 3)
    images_path, done_path = partial / "images.npy", partial / "chunks.done"
    images = _memmap(images_path, shape, np.uint8, partial)
    sizes = _memmap(partial / "sizes.npy", (len(pool), 4), np.int32, partial) if decode else None
    done = {int(x) for x in done_path.read_text().split()} if done_path.exists() else set()
    chunks = [c for c in range((len(pool) + CHUNK_IMAGES - 1) // CHUNK_IMAGES) if c not in done]
    log.info(
        "decoding %d images into %s (%d chunks, %d threads)", len(pool), entry, len(chunks), workers
    )

    def decode_chunk(c: int) -> int:
        for i in range(c * CHUNK_IMAGES, min(len(pool), (c + 1) * CHUNK_IMAGES)):
            try:
                if decode is None:
                    images[i] = clip_preprocess(pool.open_image(i), image_size)
                else:
                    pixels, row = decode(pool.open_image(i))
                    images[i, : pixels.shape[0], : pixels.shape[1]] = pixels
                    sizes[i] = row  # type: ignore[index]
            except OSError as exc:
                raise RuntimeError(f"cannot decode {pool.ids[i]}: {exc}") from exc
        return c

    with ThreadPoolExecutor(max_workers=workers) as ex, open(done_path, "a") as marks:
        for c in ex.map(decode_chunk, chunks):
            images.flush()
            if sizes is not None:
                sizes.flush()
            marks.write(f"{c}\n")
            marks.flush()
    images.flush()
    if sizes is not None:
        _shrink(images_path, int(sizes[:, 2:].max(initial=1)))
    np.save(partial / "labels.npy", pool.labels.astype(np.int64))
    (partial / "ids.txt").write_text("\n".join(pool.ids) + "\n")
    done_path.unlink()
    (partial / COMPLETE).write_text("")
    if entry.exists():
        shutil.rmtree(entry)
    partial.rename(entry)


def _shrink(images_path: Path, side: int) -> None:
    """Cut every square of a finished views file down to `side` (its largest stored image)."""
    images = np.load(images_path, mmap_mode="r")
    if images.shape[1] <= side:
        return
    tmp = images_path.with_name("shrunk.npy")
    out = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(images), side, side, 3)
    )
    for start in range(0, len(images), CHUNK_IMAGES):
        out[start : start + CHUNK_IMAGES] = images[start : start + CHUNK_IMAGES, :side, :side]
    out.flush()
    del images, out
    tmp.replace(images_path)


def _memmap(path: Path, shape: tuple[int, ...], dtype: type, partial: Path) -> np.memmap:
    """A partial build's array: reopened when an interrupted build left it, else created."""
    if path.exists():
        array = np.load(path, mmap_mode="r+")
        if array.shape != shape:
            raise RuntimeError(f"stale partial decode cache {partial}; delete it")
        return array
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
