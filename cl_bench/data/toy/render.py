"""Vectorised rendering of toy images: a class pattern drawn in a domain's (or the generic) style.

A class is a shape field (a sum of Gaussian blobs, thresholded into a mask) with a colour and a
stripe fill, or for texture domains a full-frame periodic texture. A style is a background, a
colour transform of the object and a post-process (blur, speckle). The same class rendered in
the generic style (grey background, true colours) and in its domain style looks different:
zero-shot skill on a domain depends on whether pre-training saw that style (docs/toy-world.md).

Everything is numpy on whole batches; no per-image Python loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cl_bench.data.toy.domains import DomainSpec

GENERIC = "generic"


@dataclass(frozen=True)
class ClassBank:
    """Per-class attributes of one domain, at one image size."""

    fields: np.ndarray  # [C, H, W] float32, standardised shape fields (object mode)
    thresholds: np.ndarray  # [C] field value at the mask edge
    colours: np.ndarray  # [C, 3] float32 in [0, 1]
    colours_b: np.ndarray  # [C, 3] second texture colour
    angles: np.ndarray  # [C] fill / texture orientation (radians)
    freqs: np.ndarray  # [C] fill / texture frequency (cycles per image)
    kinds: np.ndarray  # [C] texture kind: 0 stripes, 1 checker, 2 dots


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(ax, ax, indexing="ij")  # yy, xx in (0, 1)


def _blob_fields(
    rng: np.random.Generator,
    count: int,
    size: int,
    family: tuple[int, float, float, float] = (5, 0.07, 0.16, 1.0),
) -> np.ndarray:
    """Shape fields of one shape family: (blobs, min sigma, max sigma, x/y aspect)."""
    yy, xx = _grid(size)
    n_blobs, sig_lo, sig_hi, aspect = family
    cy = rng.uniform(0.28, 0.72, (count, n_blobs, 1, 1)).astype(np.float32)
    cx = rng.uniform(0.28, 0.72, (count, n_blobs, 1, 1)).astype(np.float32)
    sig = rng.uniform(sig_lo, sig_hi, (count, n_blobs, 1, 1)).astype(np.float32)
    amp = rng.uniform(0.5, 1.0, (count, n_blobs, 1, 1)).astype(np.float32)
    amp[:, -1] *= -0.8  # one negative blob carves a notch: shapes are not all convex
    d2 = (yy - cy) ** 2 * aspect + (xx - cx) ** 2 / aspect
    f = (amp * np.exp(-d2 / (2 * sig**2))).sum(axis=1)
    f -= f.mean(axis=(1, 2), keepdims=True)
    f /= f.std(axis=(1, 2), keepdims=True) + 1e-6
    return f.astype(np.float32)


def _hsv_colours(
    rng: np.random.Generator,
    count: int,
    sat: tuple[float, float],
    val: tuple[float, float],
    hue_band: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Hues spread evenly over the band (random order) so colours inside a domain are distinct."""
    centre, width = hue_band
    hue = (centre + width * (np.arange(count) / count + rng.uniform(0, 1 / count))) % 1.0
    hue = rng.permutation(hue)
    s = rng.uniform(*sat, count)
    v = rng.uniform(*val, count)
    k = (np.array([5.0, 3.0, 1.0])[None, :] + hue[:, None] * 6.0) % 6.0
    rgb = v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb.astype(np.float32)


def make_class_bank(spec: DomainSpec, seed: int | Sequence[int], size: int) -> ClassBank:
    """Class attributes; fine-grained groups share a base shape/colour, composite names compose."""
    rng = np.random.default_rng(seed)
    c = len(spec.classnames)
    g = max(1, spec.group_size)
    # Each domain has its own shape family and hue band: classes are fine-grained within a
    # domain and domains differ in content, not only in style (PROTOCOL.md §5).
    family = (
        int(rng.integers(2, 7)),
        float(rng.uniform(0.05, 0.09)),
        float(rng.uniform(0.12, 0.2)),
        float(rng.uniform(0.5, 2.0)),
    )
    band = spec.hue_band
    family = spec.shape_family or family
    own_fields = _blob_fields(rng, c, size, family)
    own_cols = _hsv_colours(rng, c, (0.55, 0.95), (0.55, 0.95), band)
    idx = np.arange(c)
    if (
        spec.compose
    ):  # "<colour word> <shape word>": shape from the second word, colour from the first
        shapes = _blob_fields(rng, g, size, family)
        cols = _hsv_colours(rng, (c + g - 1) // g, (0.6, 0.95), (0.6, 0.95), band)
        fields = shapes[idx % g]
        colours = cols[idx // g]
    else:
        groups = idx // g
        n_groups = int(groups.max()) + 1
        base_fields = _blob_fields(rng, n_groups, size, family)
        base_cols = _hsv_colours(rng, n_groups, (0.55, 0.95), (0.55, 0.95), band)
        m = spec.group_mix if g > 1 else 0.0
        fields = m * base_fields[groups] + (1 - m) * own_fields
        fields = (fields - fields.mean(axis=(1, 2), keepdims=True)) / (
            fields.std(axis=(1, 2), keepdims=True) + 1e-6
        )
        colours = m * base_cols[groups] + (1 - m) * own_cols
    thresholds = np.quantile(fields.reshape(c, -1), 0.72, axis=1).astype(np.float32)
    return ClassBank(
        fields=fields.astype(np.float32),
        thresholds=thresholds,
        colours=colours.astype(np.float32),
        colours_b=_hsv_colours(rng, c, (0.3, 0.9), (0.2, 0.6)),
        angles=rng.permutation(
            np.linspace(0, np.pi, c, endpoint=False) + rng.uniform(0, np.pi / c)
        ).astype(np.float32),
        freqs=rng.uniform(2.0, 6.0, c).astype(np.float32),
        kinds=(idx % 3).astype(np.int64)[rng.permutation(c)],
    )


def _periodic(
    kind: np.ndarray, angle: np.ndarray, freq: np.ndarray, phase: np.ndarray, size: int
) -> np.ndarray:
    """[N, H, W] in [0, 1]: stripes, checker or dots at the given orientation and frequency."""
    yy, xx = _grid(size)
    a, f, p = angle[:, None, None], freq[:, None, None], phase[:, None, None]
    u = 2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy) + p
    v = 2 * np.pi * f * (-np.sin(a) * xx + np.cos(a) * yy) + 1.7 * p
    stripes = 0.5 + 0.5 * np.sin(u)
    checker = 0.5 + 0.5 * np.sign(np.sin(u) * np.sin(v)) * np.minimum(
        1.0, 3 * np.abs(np.sin(u) * np.sin(v))
    )
    dots = np.clip(2.0 * (np.sin(u) * np.sin(v)) ** 2, 0, 1)
    k = kind[:, None, None]
    return np.where(k == 0, stripes, np.where(k == 1, checker, dots)).astype(np.float32)


def _background(style: str, rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """[N, H, W, 3] background of a style, with per-image variation."""
    yy, xx = _grid(size)
    yy, xx = yy[None, :, :, None], xx[None, :, :, None]
    u = rng.uniform(0, 1, (n, 1, 1, 1)).astype(np.float32)
    col = lambda *rgb: np.array(rgb, dtype=np.float32)[None, None, None, :]  # noqa: E731
    if style == GENERIC:
        return np.broadcast_to(0.45 + 0.1 * u, (n, size, size, 3)).copy()
    if style == "sky":
        return col(0.35, 0.55, 0.9) * (1 - yy) + col(0.85, 0.9, 0.98) * yy + 0.05 * (u - 0.5)
    if style == "studio":
        return np.broadcast_to(col(0.96, 0.96, 0.95) - 0.04 * u, (n, size, size, 3)).copy()
    if style in ("clutter", "varied"):
        ph = rng.uniform(0, 2 * np.pi, (n, 1, 1, 3)).astype(np.float32)
        fr = rng.uniform(1.0, 3.0, (n, 1, 1, 3)).astype(np.float32)
        base = 0.5 + 0.35 * np.sin(2 * np.pi * fr * (xx + 0.6 * yy) + ph) * np.cos(
            2 * np.pi * fr * (yy - 0.3 * xx) + 1.3 * ph
        )
        if style == "varied":
            flat = rng.uniform(0.15, 0.85, (n, 1, 1, 3)).astype(np.float32)
            return 0.6 * flat + 0.4 * base
        return base
    if style == "foliage":
        ph = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1)).astype(np.float32)
        leaf = 0.5 + 0.5 * np.sin(9 * xx + 7 * yy + ph) * np.sin(11 * yy - 5 * xx + 2 * ph)
        return col(0.05, 0.22, 0.06) + leaf * col(0.1, 0.25, 0.08)
    if style == "plate":
        grain = 0.5 + 0.5 * np.sin(40 * yy + 3 * np.sin(6 * xx) + 6 * u)
        wood = col(0.45, 0.28, 0.12) + 0.12 * grain
        disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.4**2).astype(np.float32)
        return wood * (1 - disc) + col(0.95, 0.93, 0.88) * disc
    if style == "ink":
        return np.zeros((n, size, size, 3), dtype=np.float32) + 0.04 * u
    if style == "indoor":
        return col(0.85, 0.74, 0.58) * (1 - xx) + col(0.58, 0.42, 0.28) * xx + 0.06 * (u - 0.5)
    if style == "road":
        sky = col(0.6, 0.7, 0.8)
        asphalt = col(0.25, 0.25, 0.27)
        lower = (yy > 0.62).astype(np.float32)
        dash = ((np.abs(yy - 0.82) < 0.025) & (np.sin(25 * xx + 6 * u) > 0)).astype(np.float32)
        return sky * (1 - lower) + asphalt * lower * (1 - dash) + col(0.95, 0.85, 0.1) * dash
    if style == "landscape":
        horizon = 0.45 + 0.15 * u
        ground = (yy > horizon).astype(np.float32)
        return (
            col(0.55, 0.75, 0.95) * (1 - ground)
            + (col(0.45, 0.5, 0.25) + 0.15 * (yy - horizon)) * ground
        )
    if style == "interior":
        wall = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * 6 * xx + 6 * u))
        floor = (yy > 0.78).astype(np.float32)
        return (col(0.75, 0.7, 0.62) + 0.08 * wall) * (1 - floor) + col(0.4, 0.3, 0.22) * floor
    if style in ("fabric", "satellite"):
        return np.zeros((n, size, size, 3), dtype=np.float32)
    raise ValueError(f"unknown toy style {style!r}")


def _object_colour(style: str, colours: np.ndarray) -> np.ndarray:
    """How a style shifts the object's colours (a colour-reliant model must learn the shift)."""
    if style == "sky":  # aircraft: dark, desaturated silhouettes
        return 0.35 * colours + 0.65 * np.array([0.3, 0.3, 0.33], dtype=np.float32)
    if style == "ink":  # mnist: white on black
        return np.ones_like(colours) * 0.95
    if style == "indoor":  # pets: brown fur tints
        return 0.45 * colours + 0.55 * np.array([0.55, 0.38, 0.22], dtype=np.float32)
    if style == "foliage":  # flowers: saturated
        return np.clip(1.5 * colours - 0.5 * colours.mean(axis=-1, keepdims=True), 0, 1)
    if style == "satellite":  # eurosat: earth tones
        return 0.5 * colours + 0.5 * np.array([0.35, 0.42, 0.22], dtype=np.float32)
    return colours


def _shift(
    fields: np.ndarray, labels: np.ndarray, rng: np.random.Generator, max_px: int
) -> np.ndarray:
    """Gather each image's class field with a random integer translation (wrap-around)."""
    n, size = labels.shape[0], fields.shape[-1]
    dy = rng.integers(-max_px, max_px + 1, (n,))
    dx = rng.integers(-max_px, max_px + 1, (n,))
    ar = np.arange(size)
    rows = (ar[None, :] - dy[:, None]) % size
    cols = (ar[None, :] - dx[:, None]) % size
    return fields[labels[:, None, None], rows[:, :, None], cols[:, None, :]]


def render(
    spec: DomainSpec,
    bank: ClassBank,
    labels: np.ndarray,
    styles: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """uint8 [N, H, W, 3]: class `labels[i]` drawn in the domain style (styles[i]=True) or generic."""
    n, size = labels.shape[0], bank.fields.shape[-1]
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for use_domain in (False, True):
        sel = np.flatnonzero(styles == use_domain)
        if sel.size:
            out[sel] = _render_style(
                spec, bank, labels[sel], spec.style if use_domain else GENERIC, rng
            )
    out += rng.normal(0.0, spec.noise_std, out.shape).astype(np.float32)
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _render_style(
    spec: DomainSpec, bank: ClassBank, labels: np.ndarray, style: str, rng: np.random.Generator
) -> np.ndarray:
    n, size = labels.shape[0], bank.fields.shape[-1]
    yy, xx = _grid(size)
    phase = rng.uniform(0, 2 * np.pi, (n,)).astype(np.float32)
    bright = rng.uniform(0.88, 1.12, (n, 1, 1, 1)).astype(np.float32)
    bg = _background(style, rng, n, size)
    col_a = _object_colour(style, bank.colours[labels])[:, None, None, :]
    if spec.mode == "texture":
        tex = _periodic(bank.kinds[labels], bank.angles[labels], bank.freqs[labels], phase, size)[
            ..., None
        ]
        col_b = _object_colour(style, bank.colours_b[labels])[:, None, None, :]
        img = col_a * tex + col_b * (1 - tex)
        if style == "satellite":  # coarse field blocks of varying brightness
            blocks = rng.uniform(0.8, 1.2, (n, 4, 4, 1)).astype(np.float32)
            img = (
                img
                * np.repeat(np.repeat(blocks, -(-size // 4), 1), -(-size // 4), 2)[:, :size, :size]
            )
        elif style == "fabric":  # a fine weave over every texture
            img = (
                img
                * (0.88 + 0.12 * (0.5 + 0.5 * np.sin(2 * np.pi * 12 * (xx + yy))))[None, :, :, None]
            )
        if style == GENERIC:  # the texture concept as a disc on the grey background
            disc = (((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.33**2).astype(np.float32)[
                None, :, :, None
            ]
            img = img * disc + bg * (1 - disc)
        return img * bright
    field = _shift(bank.fields, labels, rng, max_px=max(1, round(0.09 * size)))
    edge = (field - bank.thresholds[labels][:, None, None])[..., None]
    if (
        style == "ink"
    ):  # a bright stroke along the outline over a dimmer silhouette, like handwriting
        mask = np.clip(
            np.exp(-((edge / 0.25) ** 2)) + 0.55 / (1.0 + np.exp(-edge / 0.12)), 0.0, 1.0
        )
    else:
        mask = 1.0 / (1.0 + np.exp(-edge / 0.12))
    fill = _periodic(
        np.zeros(n, dtype=np.int64), bank.angles[labels], bank.freqs[labels], phase, size
    )[..., None]
    obj = col_a * (0.75 + 0.25 * fill) if style != "ink" else col_a
    img = obj * mask + bg * (1 - mask)
    if style == "clutter":  # cifar: small, blurry images
        h = size // 2
        small = img[:, : 2 * h, : 2 * h].reshape(n, h, 2, h, 2, 3).mean(axis=(2, 4))
        img = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)
    return img * bright
