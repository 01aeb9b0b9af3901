"""A picture of the toy world: sample test images of every domain with their class captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cl_bench.data.toy.distribution import PretrainDistribution
from cl_bench.data.toy.world import ToyWorld


def _wrap(text: str, width: int = 16) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines[:2])


def show_grid(
    out: Path,
    per_domain: int = 8,
    image_size: int = 32,
    domains: list[str] | None = None,
    generic_row: bool = False,
) -> Path:
    """One row per domain (test images, classes spread out), each captioned with its class name.

    With `generic_row`, each domain row is followed by the same classes in the generic
    pre-training style, which shows the style shift zero-shot has to bridge.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    world = ToyWorld()
    names = domains or world.dataset_names()
    rows: list[tuple[str, list[np.ndarray], list[str]]] = []
    dist = PretrainDistribution(image_size) if generic_row else None
    for name in names:
        info = world.dataset_info(name)
        split = world.load_split(name, "test", None, 0, image_size)
        classes = np.linspace(0, info.num_classes - 1, per_domain).round().astype(int)
        idx = [int(np.flatnonzero(split.labels == c)[0]) for c in classes]
        rows.append(
            (
                name,
                [np.asarray(split.images[i]) for i in idx],
                [info.classnames[c] for c in classes],
            )
        )
        if dist is not None:
            d = world.dataset_names().index(name)
            from cl_bench.data.toy.render import render

            rng = np.random.default_rng(0)
            generic = render(
                dist.specs[d], dist.banks[d], classes, np.zeros(len(classes), dtype=bool), rng
            )
            rows.append(
                (f"{name}\n(generic)", list(generic), [info.classnames[c] for c in classes])
            )
    fig, axes = plt.subplots(len(rows), per_domain, figsize=(per_domain * 1.15, len(rows) * 1.35))
    grid = np.atleast_2d(axes)
    for r, (name, imgs, caps) in enumerate(rows):
        for c in range(per_domain):
            ax = grid[r, c]
            ax.imshow(imgs[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(_wrap(caps[c]), fontsize=6, pad=2)
            if c == 0:
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
