"""Where the time of a toy run goes: one task's training and one evaluation, profiled.

    python benchmarks/profile_toy.py --learner drslora --steps 20 --threads 1

Runs the engine's own parts (`Engine.prepare`: its trainer and evaluator) under torch.profiler and
groups CPU time by what it is spent on: matmuls, attention, other tensor ops, the optimizer,
and Python/engine overhead (wall time not covered by any op). Prints a markdown table and the
per-phase totals that, scaled by the protocol's counts (10 tasks x iterations, 11
evaluations), give the cost of a full run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from cl_bench.engine.config import RunConfig
from cl_bench.engine.loop import Engine, seed_everything

GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution"),
    "attention": (
        "aten::_scaled_dot_product",
        "aten::_native_multi_head_attention",
        "aten::_softmax",
    ),
    "optimizer": ("Optimizer.step", "Optimizer.zero_grad", "aten::_foreach"),
}


def _group(name: str) -> str:
    for group, prefixes in GROUPS.items():
        if name.startswith(prefixes):
            return group
    return "other tensor ops"


def _breakdown(prof, wall_s: float) -> dict[str, float]:
    """Self CPU seconds per group; the rest of the wall time is Python/engine/idle."""
    out: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        if evt.key.startswith("Optimizer."):
            out["optimizer"] += evt.self_cpu_time_total / 1e6
        elif evt.key.startswith("aten::"):
            out[_group(evt.key)] += evt.self_cpu_time_total / 1e6
    out["python, engine, waiting"] = max(0.0, wall_s - sum(out.values()))
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learner", default="drslora")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--eval-limit", type=int, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(
            learner=args.learner, iterations=args.steps, out=f"{tmp}/run", threads=args.threads,
            precision=args.precision, eval_limit=args.eval_limit, device="cpu",
        )  # fmt: skip
        engine = Engine(cfg)
        seed_everything(cfg.seed)
        parts = engine.prepare()  # the run's own backbone, test sets, learner, trainer, evaluator
        learner = parts.learner
        train, task, training = engine.open_task(0, parts)
        with profile(activities=[ProfilerActivity.CPU]) as prof_train:
            t0 = time.perf_counter()
            if training is not None:
                parts.trainer.train(
                    learner, training, train, parts.backbone.normalize, cfg.seed, [],
                    where=engine.directory.path,
                )  # fmt: skip
            train_s = time.perf_counter() - t0
        learner.end_task(task)
        parts.trainer.end()
        parts.evaluator.cache.enabled = False  # every evaluation after a task recomputes
        with profile(activities=[ProfilerActivity.CPU]) as prof_eval:
            t0 = time.perf_counter()
            parts.evaluator.evaluate(learner, "eval")
            eval_s = time.perf_counter() - t0
        tests = parts.test_sets

    images = sum(len(t) for t in tests.values())
    print(f"threads {torch.get_num_threads()}, learner {args.learner}, {args.precision}")
    print(
        f"train: {args.steps} steps in {train_s:.2f} s ({train_s / args.steps * 1e3:.0f} ms/step)"
    )
    print(f"eval: {images} images in {eval_s:.2f} s ({images / eval_s:.0f} img/s)")
    rows = {
        "train step": _breakdown(prof_train, train_s),
        "evaluation": _breakdown(prof_eval, eval_s),
    }
    groups = sorted({g for r in rows.values() for g in r})
    print("\n| share of wall time | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for g in groups:
        cells = [
            f"{rows[r].get(g, 0.0) / (train_s if r == 'train step' else eval_s):.0%}" for r in rows
        ]
        print(f"| {g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
