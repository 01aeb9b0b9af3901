"""cl-bench's real-world input path against the reference codes' (ZSCL / RAIL / CoDyRA), on CPU.

    python benchmarks/real_pipeline.py                      # default: a few minutes on 2 cores
    python benchmarks/real_pipeline.py --smoke --out DIR    # seconds (tests/test_benchmarks.py)

Generates JPEG image folders of realistic size (500x375 px, one folder per class, several
datasets; under a temporary directory, never committed), then measures in one process, with
the same tiny random open_clip model on both sides so the model's cost is equal:

(a) one X-TAIL stream's evaluations: `--passes` (11 = row 0 + one per task of a 10-task
    stream) evaluation passes over every test set.
    - cl-bench: the decode cache (`cl_bench.data.real.cache.decoded`: PIL decode + CLIP's eval
      resize/crop once, into a uint8 memmap), then per pass `cl_bench.data.scoring.image_features`
      (uint8 batches, `Backbone.normalize` on the device) and top-1 counting. The first pass
      also pays the cache build, reported separately (`first_pass_s`, `cache_build_s`).
    - reference style: torchvision `ImageFolder` + CLIP's eval transform (Resize bicubic,
      CenterCrop, RGB, ToTensor, Normalize) + a `DataLoader` with `--workers` worker
      processes, decoding every image again on every pass (what the reference repositories'
      evaluation loops do).
    Both count the same top-1 predictions within a few images (uint8 rounding differs: the
    reference normalises the float image, cl-bench the stored uint8).
(b) training batches per second: `--steps` optimizer steps (batch `--batch-size`) of the
    contrastive loss on the model, fed by cl-bench's batch gather from the train split's
    decode cache vs a shuffled `DataLoader` over the train folders (the references decode
    every training image on every step). The input-only rate of each feeder is reported too,
    which says whether training is input-bound.

Writes one JSON object (`--out`, default results/benchmarks/real_pipeline-<machine>.json)
and prints a summary. The ratios are reference time / cl-bench time (> 1: cl-bench faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


# -- data -----------------------------------------------------------------------------------
def make_jpeg_folders(
    root: Path, datasets: int, classes: int, train: int, test: int, size: tuple[int, int], seed: int
) -> dict[str, dict[str, Path]]:
    """root/<dataset>/<split>/<class>/<i>.jpg: smooth random colour fields with noise, JPEG
    quality 90 (a 500x375 file is ~30-60 KB, like photos of that size)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    out: dict[str, dict[str, Path]] = {}
    for d in range(datasets):
        name = f"ds{d}"
        out[name] = {}
        for split, per_class in (("train", train), ("test", test)):
            split_dir = root / name / split
            out[name][split] = split_dir
            for c in range(classes):
                cdir = split_dir / f"class{c:03d}"
                cdir.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
                    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)
                    px = np.asarray(img, dtype=np.int16) + rng.integers(-24, 25, size=(h, w, 3))
                    Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(
                        cdir / f"{i:05d}.jpg", quality=90
                    )
    return out


def folder_files(split_dir: Path) -> tuple[list[Path], np.ndarray]:
    """Files and labels in ImageFolder's order (sorted class folders, sorted files)."""
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, cdir in enumerate(classes):
        for f in sorted(cdir.iterdir()):
            paths.append(f)
            labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64)


# -- the two evaluation paths ---------------------------------------------------------------
def clip_eval_transform(image_size: int, mean, std):
    """CLIP's `_transform` (openai/CLIP clip.py), as the reference repositories use it."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            lambda img: img.convert("RGB"),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def reference_loader(split_dir: Path, transform, batch_size: int, workers: int, shuffle: bool):
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(split_dir), transform=transform)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        drop_last=shuffle,
        # evaluation: workers start anew on every pass, as in the references' loops; training
        # keeps them across epochs (favours the reference: no restart every epoch)
        persistent_workers=shuffle and workers > 0,
    )


@torch.inference_mode()
def reference_eval_pass(model, loaders: dict, classifiers: dict) -> dict[str, int]:
    correct = {}
    for name, loader in loaders.items():
        n = 0
        for x, y in loader:
            feats = F.normalize(model.encode_image(x).float(), dim=-1)
            n += int((feats @ classifiers[name].T).argmax(dim=1).eq(y).sum())
        correct[name] = n
    return correct


@torch.inference_mode()
def clbench_eval_pass(model, backbone, sets: dict, classifiers: dict, batch_size: int):
    from cl_bench.data.scoring import image_features, top1_correct

    device = torch.device("cpu")
    return {
        name: top1_correct(
            image_features(model, backbone, s, batch_size, device), s.labels, classifiers[name], 0
        )
        for name, s in sets.items()
    }


def decode_cached(split_dir: Path, cache_root: Path, name: str, image_size: int, workers: int):
    from cl_bench.data.real.cache import decoded, entry_dir
    from cl_bench.data.real.sources import file_pool
    from cl_bench.data.world import ImageSet, hash_ids

    paths, labels = folder_files(split_dir)
    pool = file_pool(paths, labels, split_dir)
    ids_hash = hash_ids(pool.ids, labels)
    entry = entry_dir(cache_root, name, split_dir.name, ids_hash, image_size)
    images, labels = decoded(pool, entry, image_size, workers)
    return ImageSet(images, labels, ids_hash)


# -- training -------------------------------------------------------------------------------
def train_step(model, optimizer, images: torch.Tensor, labels: torch.Tensor, tokens) -> None:
    from cl_bench.api.toolkit import clip_logits, contrastive_loss

    optimizer.zero_grad(set_to_none=True)
    loss = contrastive_loss(clip_logits(model, images, tokens), labels)
    loss.backward()
    optimizer.step()


def clbench_batches(train, backbone, batch_size: int, steps: int, seed: int):
    """The engine's feeder: BatchStream indices, a gather from the memmap, normalize."""
    from cl_bench.api.sampling import to_device
    from cl_bench.engine.trainer import BatchStream

    stream = BatchStream(train, batch_size, seed, 0)
    device = torch.device("cpu")
    for _ in range(steps):
        idx = stream.next_indices()
        yield (
            backbone.normalize(to_device(train.images[idx], device)),
            torch.from_numpy(np.asarray(train.labels[idx], dtype=np.int64)),
        )


def reference_batches(loader, steps: int):
    done = 0
    while done < steps:
        for x, y in loader:
            yield x, y
            done += 1
            if done == steps:
                return


def timed(fn) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# -- main -----------------------------------------------------------------------------------
def machine_tag() -> str:
    """e.g. amd-epyc-2cpu: the CPU's first two words and the core count."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = "-".join(line.split(":", 1)[1].split()[:2])
                break
    except OSError:
        pass
    return f"{cpu}-{os.cpu_count()}cpu".lower()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cl_bench.models.tiny import random_tiny_clip

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="clbench-realpipe-", dir=args.tmp))
    try:
        t_gen, folders = timed(
            lambda: make_jpeg_folders(
                tmp / "data", args.datasets, args.classes, args.train_per_class,
                args.test_per_class, (args.width, args.height), args.seed,
            )
        )  # fmt: skip
        jpeg_bytes = sum(f.stat().st_size for f in (tmp / "data").rglob("*.jpg"))
        n_files = sum(1 for _ in (tmp / "data").rglob("*.jpg"))
        backbone = random_tiny_clip(
            seed=args.seed, image_size=args.image_size, width=args.model_width,
            layers=args.model_layers, patch_size=args.patch_size,
        )  # fmt: skip
        model = backbone.model
        model.eval()
        gen = torch.Generator().manual_seed(args.seed)
        classifiers = {
            n: F.normalize(torch.randn(args.classes, backbone.width, generator=gen), dim=-1)
            for n in folders
        }
        transform = clip_eval_transform(args.image_size, backbone.mean, backbone.std)

        # (a) evaluation: the reference decodes on every pass, cl-bench once (first pass)
        cache_root = tmp / "cache"
        ref_pass_s: list[float] = []
        cl_pass_s: list[float] = []
        ref_counts: dict[str, int] = {}
        cl_counts: dict[str, int] = {}
        cache_build_s = 0.0
        sets: dict[str, Any] = {}
        for p in range(args.passes):
            # interleaved: both paths see the same load; order flips every pass
            for kind in ("ref", "cl") if p % 2 == 0 else ("cl", "ref"):
                if kind == "ref":
                    loaders = {
                        n: reference_loader(
                            f["test"], transform, args.eval_batch_size, args.workers, False
                        )
                        for n, f in folders.items()
                    }
                    dt, ref_counts = timed(
                        lambda loaders=loaders: reference_eval_pass(model, loaders, classifiers)
                    )
                    ref_pass_s.append(dt)
                else:
                    t0 = time.perf_counter()
                    if not sets:
                        sets = {
                            n: decode_cached(
                                f["test"], cache_root, n, args.image_size, args.decode_threads
                            )
                            for n, f in folders.items()
                        }
                        cache_build_s = time.perf_counter() - t0
                    cl_counts = clbench_eval_pass(
                        model, backbone, sets, classifiers, args.eval_batch_size
                    )
                    cl_pass_s.append(time.perf_counter() - t0)
        test_images = sum(len(s) for s in sets.values())
        disagree = sum(abs(ref_counts[n] - cl_counts[n]) for n in folders)
        if disagree > max(2, test_images // 100):
            raise SystemExit(
                f"the two evaluation paths disagree on {disagree} of {test_images} predictions; a bug"
            )

        # (b) training: same model copy per path, same number of steps and batch size
        tokens = backbone.tokenizer([f"a photo of class {c}" for c in range(args.classes)])
        first = next(iter(folders.values()))
        t0 = time.perf_counter()
        train_set = decode_cached(
            first["train"], cache_root, "train0", args.image_size, args.decode_threads
        )
        train_cache_s = time.perf_counter() - t0
        ref_loader = reference_loader(
            first["train"], transform, args.batch_size, args.workers, True
        )
        state = {k: v.clone() for k, v in model.state_dict().items()}

        def train_with(batches) -> float:
            model.load_state_dict(state)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            t = time.perf_counter()
            for x, y in batches:
                train_step(model, opt, x, y, tokens)
            return time.perf_counter() - t

        def feed_only(batches) -> float:
            t = time.perf_counter()
            for _ in batches:
                pass
            return time.perf_counter() - t

        train_s: dict[str, list[float]] = {"ref": [], "cl": []}
        feed_s: dict[str, list[float]] = {"ref": [], "cl": []}
        for r in range(args.repeats):
            for kind in ("ref", "cl") if r % 2 == 0 else ("cl", "ref"):
                make = (
                    (lambda: reference_batches(ref_loader, args.steps))
                    if kind == "ref"
                    else (
                        lambda: clbench_batches(
                            train_set, backbone, args.batch_size, args.steps, args.seed
                        )
                    )
                )
                train_s[kind].append(train_with(make()))
                feed_s[kind].append(feed_only(make()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ref_eval, cl_eval = sum(ref_pass_s), sum(cl_pass_s)
    cl_later = cl_pass_s[1:] or cl_pass_s
    med = statistics.median
    result = {
        "benchmark": "real_pipeline",
        "command": "python benchmarks/real_pipeline.py " + " ".join(args.argv),
        "machine": machine_tag(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "dataloader_workers": args.workers,
        "decode_threads": args.decode_threads,
        "datasets": args.datasets,
        "jpeg_files": n_files,
        "jpeg_size_px": [args.width, args.height],
        "jpeg_mean_kb": round(jpeg_bytes / max(1, n_files) / 1024, 1),
        "generate_s": round(t_gen, 2),
        "model": {
            "image_size": args.image_size,
            "patch_size": args.patch_size,
            "width": args.model_width,
            "layers": args.model_layers,
            "weights": "random",
        },  # fmt: skip
        "eval": {
            "passes": args.passes,
            "test_images": test_images,
            "reference_s": round(ref_eval, 3),
            "clbench_s": round(cl_eval, 3),
            "ratio": round(ref_eval / cl_eval, 2),  # reference / cl-bench, whole stream
            "reference_pass_s": [round(x, 3) for x in ref_pass_s],
            "clbench_pass_s": [round(x, 3) for x in cl_pass_s],
            "clbench_first_pass_s": round(cl_pass_s[0], 3),
            "clbench_cache_build_s": round(cache_build_s, 3),
            "clbench_later_pass_median_s": round(med(cl_later), 3),
            "reference_pass_median_s": round(med(ref_pass_s), 3),
            "ratio_later_passes": round(med(ref_pass_s) / med(cl_later), 2),
            "ratio_first_pass": round(ref_pass_s[0] / cl_pass_s[0], 2),
            "prediction_disagreements": disagree,
        },
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "reference_steps_per_s": round(args.steps / med(train_s["ref"]), 2),
            "clbench_steps_per_s": round(args.steps / med(train_s["cl"]), 2),
            "ratio": round(med(train_s["ref"]) / med(train_s["cl"]), 2),
            "reference_feed_batches_per_s": round(args.steps / med(feed_s["ref"]), 2),
            "clbench_feed_batches_per_s": round(args.steps / med(feed_s["cl"]), 2),
            "clbench_train_cache_build_s": round(train_cache_s, 3),
            "clbench_input_share": round(med(feed_s["cl"]) / med(train_s["cl"]), 3),
        },
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, for the test")
    p.add_argument("--datasets", type=int, default=4)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=20)
    p.add_argument("--test-per-class", type=int, default=60)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--passes", type=int, default=11)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (reference)")
    p.add_argument("--decode-threads", type=int, default=2, help="decode cache threads")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the model")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--model-width", type=int, default=64)
    p.add_argument("--model-layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="where the JPEG folders go (default: $TMPDIR)")
    p.add_argument("--out", default=None, help="JSON path (default results/benchmarks/...)")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    if args.smoke:
        args.datasets, args.classes = 2, 3
        args.train_per_class, args.test_per_class = 4, 4
        args.width, args.height, args.image_size = 100, 75, 32
        args.patch_size, args.model_width, args.model_layers = 16, 32, 1
        args.passes, args.steps, args.repeats, args.batch_size = 3, 2, 1, 4
        args.workers, args.decode_threads = 0, 1  # no worker start-up: seconds
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    result = run(args)
    out = (
        Path(args.out)
        if args.out
        else REPO / "results" / "benchmarks" / f"real_pipeline-{result['machine']}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    e, t = result["eval"], result["train"]
    print(
        f"evaluation, {e['passes']} passes x {e['test_images']} test images: reference "
        f"{e['reference_s']:.1f} s, cl-bench {e['clbench_s']:.1f} s -> ratio {e['ratio']:.2f} "
        f"(first pass incl. cache build {e['clbench_first_pass_s']:.2f} s of which build "
        f"{e['clbench_cache_build_s']:.2f} s; later passes {e['ratio_later_passes']:.1f}x)"
    )
    print(
        f"training, batch {t['batch_size']}: reference {t['reference_steps_per_s']:.2f} steps/s, "
        f"cl-bench {t['clbench_steps_per_s']:.2f} steps/s -> ratio {t['ratio']:.2f}; feeders "
        f"alone {t['reference_feed_batches_per_s']:.1f} vs {t['clbench_feed_batches_per_s']:.1f} "
        f"batches/s (cl-bench input share {t['clbench_input_share']:.1%})"
    )
    print(f"-> {out}")


if __name__ == "__main__":
    main()
