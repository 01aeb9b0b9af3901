"""Why a learner does not learn one toy domain: the domain alone, from the zero-shot model.

Written for issue 25's MNIST finding (docs/toy-world.md, "Toy MNIST and the LoRA family"):
on toy X-TAIL and MTIL the LoRA family ends its MNIST task at or below MNIST's zero-shot
accuracy while `finetune` gains ~20 points. This script separates the candidate causes:

1. the domain itself, measured on the zero-shot model: how alike its class prompts are
   (pairwise cosine of the text features), how confident and how wrong zero-shot is (mean
   cross-entropy, predicted-class histogram), and whether its image features separate the
   classes at all (nearest class mean of the 16-shot training features on the test split);
2. one-task runs on the domain alone (a one-dataset copy of the X-TAIL setting, so the union
   is the domain's own classes and nothing else trains before it), per variant: the test
   accuracy before and after, and from the training log the image->text loss and the
   training-batch accuracy (the prompts the evaluation uses: templates[0]) at chosen steps.
   Variants: the learner as committed; image->text loss only (is the text->image term
   fighting the task?); other lrs; the vision or text encoder only; a longer budget.

    python benchmarks/toy_domain_probe.py --domain mnist --out results/toy/xtail/diagnostics/mnist

Each variant is a real `cl_bench.run` (3 threads at most; ~15 CPU-s per 80-step run on the
toy). The table goes to OUT/probe.md and OUT/probe.json; the run dirs to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cl_bench.analysis.results import read_parquet
from cl_bench.api.toolkit import clip_logits, contrastive_loss
from cl_bench.learners.lora import LoRA

ROOT = Path(__file__).resolve().parent.parent
PROBE_STEPS = (1, 20, 40, 60, 80, 200, 500)


class ProbeLoRA(LoRA):
    """`lora` with its training loss decomposed in the log (and, with `--set loss=i2t`, the
    image->text term alone). Logs, per step: the image->text CE, the text->image part and the
    batch's accuracy under the task's prompts; the parameters and the step are `lora`'s."""

    name = "probe_lora"

    def loss(self, batch: Any, step: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = clip_logits(self.model, batch.images, batch.text_tokens)
        i2t = F.cross_entropy(logits, batch.labels)
        full = contrastive_loss(logits, batch.labels, 0.0, self.seen_prompts + logits.shape[1])
        accuracy = (logits.argmax(1) == batch.labels).float().mean()
        total = i2t if os.environ.get("PROBE_LOSS") == "i2t" else full
        return total, {
            "task_loss": full.detach(),
            "i2t": i2t.detach(),
            "t2i": (full - i2t).detach(),
            "train_acc": accuracy.detach(),
        }


def one_domain_tasks(domain: str) -> Path:
    """A copy of tasks/ with a setting `probe-<domain>`: X-TAIL's, on the domain alone."""
    folder = Path(tempfile.mkdtemp(prefix="clbench-probe-"))
    shutil.copytree(ROOT / "tasks", folder / "tasks")
    text = (ROOT / "tasks" / "settings" / "xtail.toml").read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("name = "):
            line = f'name = "probe-{domain}"'
        elif line.startswith("datasets = "):
            line = f'datasets = ["{domain}"]'
        elif line.startswith("holdout = "):
            line = "holdout = []"
        lines.append(line)
    (folder / "tasks" / "settings" / f"probe-{domain}.toml").write_text("\n".join(lines) + "\n")
    return folder / "tasks"


def zero_shot_profile(domain: str) -> dict[str, Any]:
    """The domain on the zero-shot model: prompt similarity, confidence, separability."""
    from cl_bench.data.toy.domains import build_domains
    from cl_bench.data.toy.model import load_toy_backbone
    from cl_bench.data.toy.world import ToyWorld

    backbone = load_toy_backbone(torch.device("cpu"))
    model = backbone.model.eval()
    spec = build_domains()[domain]
    world = ToyWorld()
    test = world.load_split(domain, "test", None, 42, backbone.image_size)
    train = world.load_split(domain, "train", 16, 42, backbone.image_size)
    with torch.no_grad():
        tokens = backbone.tokenizer([spec.templates[0].format(c) for c in spec.classnames])
        text = F.normalize(model.encode_text(tokens), dim=-1)
        feats = F.normalize(
            model.encode_image(backbone.normalize(torch.from_numpy(np.array(test.images)))), dim=-1
        )
        train_feats = F.normalize(
            model.encode_image(backbone.normalize(torch.from_numpy(np.array(train.images)))), dim=-1
        )
        logits = model.logit_scale.exp() * feats @ text.T
    labels = torch.from_numpy(np.asarray(test.labels))
    n = len(spec.classnames)
    cos = (text @ text.T)[~torch.eye(n, dtype=torch.bool)]
    pred = logits.argmax(1)
    means = torch.stack(
        [train_feats[torch.from_numpy(train.labels == c)].mean(0) for c in range(n)]
    )
    ncm = (feats @ F.normalize(means, dim=-1).T).argmax(1)
    return {
        "classes": n,
        "prompt_cosine_mean": round(float(cos.mean()), 3),
        "prompt_cosine_max": round(float(cos.max()), 3),
        "prompt_pairs_above_0.95": int((cos > 0.95).sum()) // 2,
        "zero_shot_accuracy": round(100 * float((pred == labels).float().mean()), 1),
        "zero_shot_cross_entropy": round(float(F.cross_entropy(logits, labels)), 2),
        "predicted_class_histogram": torch.bincount(pred, minlength=n).tolist(),
        "nearest_class_mean_16shot_accuracy": round(100 * float((ncm == labels).float().mean()), 1),
    }


VARIANTS: dict[str, dict[str, Any]] = {
    "finetune": {"learner": "finetune"},
    "lora": {"learner": "probe"},
    "lora, image->text loss only": {"learner": "probe", "env": "i2t"},
    "lora, vision encoder only": {"learner": "probe", "set": {"encoders": "vision"}},
    "lora, text encoder only": {"learner": "probe", "set": {"encoders": "text"}},
    "lora, lr 1e-4": {"learner": "probe", "set": {"lr": 1e-4}},
    "lora, lr 1e-3": {"learner": "probe", "set": {"lr": 1e-3}},
    "lora, lr 2e-3": {"learner": "probe", "set": {"lr": 2e-3}},
    "drslora": {"learner": "drslora"},
    "lora, 500 steps": {"learner": "probe", "iterations": 500},
    "drslora, 500 steps": {"learner": "drslora", "iterations": 500},
}


def run_variant(domain: str, name: str, spec: dict[str, Any], runs: Path) -> dict[str, Any]:
    import cl_bench

    learner = (
        f"{Path(__file__).resolve()}:ProbeLoRA" if spec["learner"] == "probe" else spec["learner"]
    )
    os.environ["PROBE_LOSS"] = spec.get("env", "full")
    options: dict[str, Any] = {"device": "cpu", "threads": 1, "log_every": 1}
    if "iterations" in spec:
        options["iterations"] = spec["iterations"]
    run_dir = runs / name.replace(", ", "-").replace(" ", "_").replace(">", "")
    result = cl_bench.run(
        f"probe-{domain}",
        learner,
        "toy",
        0,
        set=spec.get("set"),
        progress=False,
        out=str(run_dir),
        force=True,
        **options,
    )
    acc = result.accuracy
    row: dict[str, Any] = {
        "variant": name,
        "before": round(float(acc.iloc[0][domain]), 1),
        "after": round(float(acc.iloc[-1][domain]), 1),
    }
    log = read_parquet(run_dir / "train_log.parquet")
    if "i2t" in log:
        smooth = log.set_index("step")[["i2t", "train_acc"]].rolling(10, min_periods=1).mean()
        for step in PROBE_STEPS:
            if step in smooth.index:
                row[f"i2t@{step}"] = round(float(smooth.loc[step, "i2t"]), 2)
                row[f"acc@{step}"] = round(100 * float(smooth.loc[step, "train_acc"]), 0)
    return row


def markdown(profile: dict[str, Any], rows: list[dict[str, Any]], domain: str) -> str:
    lines = [f"# Toy {domain} alone, from the zero-shot model", "", "## Zero-shot profile", ""]
    lines += [f"- {k}: {v}" for k, v in profile.items()]
    steps = [s for s in PROBE_STEPS if any(f"acc@{s}" in r for r in rows)]
    head = ["variant", "acc before", "acc after"] + [f"train acc / i2t @{s}" for s in steps]
    lines += ["", "## One-task runs (seed 0)", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [r["variant"], f"{r['before']:.1f}", f"{r['after']:.1f}"]
        cells += [
            f"{r[f'acc@{s}']:.0f} / {r[f'i2t@{s}']:.2f}" if f"acc@{s}" in r else "—" for s in steps
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Training columns: 10-step running means from the run's train_log (log_every 1)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="mnist")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default="all", help="';'-separated variant names, or all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ["CLBENCH_TASKS_DIR"] = str(one_domain_tasks(args.domain))
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(";")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {'; '.join(VARIANTS)}")
    chosen = {n: VARIANTS[n] for n in names}
    args.out.mkdir(parents=True, exist_ok=True)
    profile = zero_shot_profile(args.domain)
    runs = Path(tempfile.mkdtemp(prefix="clbench-probe-runs-"))  # the table is what is kept
    rows = []
    for name, spec in chosen.items():
        rows.append(run_variant(args.domain, name, spec, runs))
        print(rows[-1], flush=True)
    (args.out / "probe.json").write_text(json.dumps({"profile": profile, "runs": rows}, indent=2))
    (args.out / "probe.md").write_text(markdown(profile, rows, args.domain))
    print(markdown(profile, rows, args.domain))


if __name__ == "__main__":
    main()
