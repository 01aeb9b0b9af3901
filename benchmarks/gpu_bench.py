"""GPU benchmark: cl-bench's own learners on a randomly initialised ViT-B/16, synthetic images.

    bash benchmarks/gpu.sh                   # one GPU, no network, <= 8 minutes
    bash benchmarks/gpu.sh --smoke --out D   # tiny model, 2 steps, CPU: seconds (the test)

For every learner (drslora, lora, finetune, zscl) and precision (fp32, bf16, fp16) it runs
`clbench bench`'s harness (`cl_bench.engine.bench.run_bench`) on a synthetic X-TAIL world
whose backbone is open_clip's ViT-B-16 built with `pretrained=None` (no weights are
downloaded; speed does not depend on the weights' values) and whose images are seeded noise
at 224 px. The setting's budgets are the real world's (X-TAIL: batch 64, the real learning
rates), as a real run on that GPU would use them, not the toy world's (batch 32). Each cell reports the engine's train steps/s and evaluation images/s, the peak
CUDA memory, and the harness/bare ratios (engine path vs a bare loop around the same step
and the same forwards; see docs/performance.md). Writes one JSON file to `--out`
(default results/benchmarks/) and prints a table.

A cell that cannot run (fp16 on CPU: autocast there is bf16-only) is recorded with its
reason instead of figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from cl_bench.data.world import DatasetInfo, DataWorld, ImageSet, hash_ids  # noqa: E402
from cl_bench.errors import UserError  # noqa: E402
from cl_bench.models.backbone import Backbone  # noqa: E402

LEARNERS = ("drslora", "lora", "finetune", "zscl")
PRECISIONS = ("fp32", "bf16", "fp16")
# X-TAIL's datasets (tasks/settings/xtail.toml): the setting names them, the world serves them
NAMES = (
    "aircraft", "caltech101", "cifar100", "dtd", "eurosat", "flowers102", "food101", "mnist",
    "oxford_pets", "stanford_cars", "sun397", "places365", "imagenet",
)  # fmt: skip
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class SyntheticWorld(DataWorld):
    """Seeded images per class (class colour + noise); the backbone is ViT-B-16 (random) or the tiny CLIP."""

    name = "synthetic"

    def __init__(
        self, model: str, image_size: int, classes: int, train_per_class: int, test_per_class: int
    ) -> None:
        self.model = model
        self.image_size = image_size
        self.classes = classes
        self.train_per_class = train_per_class
        self.test_per_class = test_per_class

    def dataset_names(self) -> list[str]:
        return list(NAMES)

    def dataset_info(self, name: str) -> DatasetInfo:
        if name not in NAMES:
            raise UserError(f"unknown dataset {name!r}; this world serves {', '.join(NAMES)}")
        return DatasetInfo(
            name,
            tuple(f"{name} class {i}" for i in range(self.classes)),
            ("a photo of a {}.", "a picture of a {}."),
            "synthetic",
        )

    def load_split(
        self, name: str, split: str, shots: int | None, split_seed: int, image_size: int
    ) -> ImageSet:
        per = self.train_per_class if split == "train" else self.test_per_class
        if shots and split == "train":
            per = min(per, shots)
        rng = np.random.default_rng([NAMES.index(name), split == "train", split_seed])
        labels = np.repeat(np.arange(self.classes), per)
        # a mean colour per class + noise: clear margins, so the bench's two evaluation
        # paths (which batch differently) agree on every prediction
        base = np.random.default_rng(NAMES.index(name)).integers(0, 256, (self.classes, 1, 1, 3))
        noise = rng.integers(-40, 40, size=(labels.size, image_size, image_size, 3))
        images = np.clip(base[labels] + noise, 0, 255).astype(np.uint8)
        return ImageSet(
            images, labels, hash_ids([f"{split}{i}" for i in range(labels.size)], labels)
        )

    def backbone(self, device: torch.device) -> Backbone:
        if self.model == "tiny":
            from cl_bench.models.tiny import random_tiny_clip

            return random_tiny_clip(seed=0, image_size=self.image_size, device=device)
        import open_clip

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(self.model, pretrained=None)
        return Backbone(
            model.to(device).eval(),
            open_clip.get_tokenizer(self.model),  # bundled BPE vocabulary: no network
            self.image_size,
            OPENAI_MEAN,
            OPENAI_STD,
            self.model,
            "random",
        )

    def reference_data(self, num_images, num_captions, seed, image_size):
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(num_images, image_size, image_size, 3), dtype=np.uint8)
        return images, [f"a photo of thing {i}." for i in range(num_captions)]


def cpu_bf16_autocast() -> bool:
    """Whether CPU autocast runs bf16 here (it is the only CPU autocast dtype)."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    except (RuntimeError, AssertionError):
        return False


def cell(world, learner: str, precision: str, device: str, args) -> dict[str, Any]:
    from cl_bench.engine.bench import run_bench

    if precision == "fp16" and device != "cuda":
        return {"skipped": "fp16 needs CUDA (CPU autocast is bf16-only)"}
    if precision == "bf16" and device != "cuda" and not cpu_bf16_autocast():
        return {"skipped": "this CPU's autocast does not run bf16"}
    from cl_bench.errors import RunFailed

    try:
        r = run_bench(
            learner=learner, world="real", world_obj=world, steps=args.steps, repeats=args.repeats,
            device=device, precision=precision, threads=args.threads,
        )  # fmt: skip
    except RunFailed as exc:  # e.g. the two evaluation paths split a near-tie differently
        return {"error": str(exc)}
    return {
        "train_steps_per_s": round(r.train_steps_per_s, 3),
        "eval_images_per_s": round(r.eval_images_per_s, 1),
        "peak_cuda_mb": r.peak_cuda_mb,
        "peak_rss_mb": r.peak_rss_mb,
        "train_ratio": round(r.train_ratio, 4),
        "eval_ratio": round(r.eval_ratio, 4),
        "train_ratios": r.train_ratios,
        "eval_ratios": r.eval_ratios,
        "bare_train_steps_per_s": round(r.bare_train_steps_per_s, 3),
        "bare_eval_images_per_s": round(r.bare_eval_images_per_s, 1),
        "batch_size": r.batch_size,
        "steps": r.steps,
        "repeats": r.repeats,
        "eval_images": r.eval_images,
        "train_host_syncs_per_step": r.train_host_syncs_per_step,
        "eval_host_syncs_per_dataset": r.eval_host_syncs_per_dataset,
        "wall_s": r.wall_s,
    }


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = (
        "| learner | precision | train steps/s | eval img/s | peak CUDA MB | train ratio "
        "| eval ratio | host syncs per step / per eval dataset |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for learner, by_prec in results.items():
        for prec, c in by_prec.items():
            if "skipped" in c or "error" in c:
                why = c.get("skipped") or c["error"][:60]
                lines.append(f"| {learner} | {prec} | {why} | | | | | |")
                continue
            mem = "—" if c["peak_cuda_mb"] is None else f"{c['peak_cuda_mb']:.0f}"
            syncs = f"{c['train_host_syncs_per_step']} / {c['eval_host_syncs_per_dataset']}"
            lines.append(
                f"| {learner} | {prec} | {c['train_steps_per_s']:.2f} | {c['eval_images_per_s']:.0f} "
                f"| {mem} | {c['train_ratio']:.3f} | {c['eval_ratio']:.3f} | {syncs} |"
            )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, CPU (seconds)")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--learners", default=",".join(LEARNERS))
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--test-per-class", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"), help="output directory")
    args = p.parse_args(argv)
    if args.smoke:
        args.device = args.device or "cpu"
        args.model, args.steps, args.repeats = "tiny", 2, 1
        args.classes, args.test_per_class, args.threads = 3, 2, args.threads or 1
        args.learners = ",".join(LEARNERS)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched; fail fast if tried
    image_size = 16 if args.model == "tiny" else 224
    world = SyntheticWorld(args.model, image_size, args.classes, 64, args.test_per_class)
    started = time.perf_counter()
    device_name = (
        torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu x{os.cpu_count()}"
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "smoke" if args.smoke else device_name.replace(" ", "-").lower()
    path = out_dir / f"gpu-{tag}.json"
    results: dict[str, dict[str, dict[str, Any]]] = {}

    def write(complete: bool) -> None:
        """Rewritten after every cell: a run cut short by a time limit keeps what it measured."""
        record = {
            "benchmark": "gpu",
            "command": "bash benchmarks/gpu.sh "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "smoke": args.smoke,
            "complete": complete,
            "device": args.device,
            "device_name": device_name,
            "model": args.model,
            "weights": "random (pretrained=None)",
            "budgets": "real",  # the setting's [real] values: batch 64 for X-TAIL
            "image_size": image_size,
            "torch": torch.__version__,
            "results": results,
            # ru_maxrss only grows and the cells share one process: a cell's figure is the
            # high-water mark up to its end, not its own (peak_cuda_mb is reset per cell)
            "peak_rss_mb_is": "process high-water mark after the cell",
            "wall_s": round(time.perf_counter() - started, 1),
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(path)

    for learner in args.learners.split(","):
        results[learner] = {}
        for precision in args.precisions.split(","):
            results[learner][precision] = cell(world, learner, precision, args.device, args)
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
            print(f"{learner} {precision}: {results[learner][precision]}", flush=True)
            write(complete=False)
    write(complete=True)
    print(table(results))
    print(f"-> {path} ({round(time.perf_counter() - started, 1)} s)")


if __name__ == "__main__":
    main()
