"""Would evaluating after task t while task t+1 trains shorten the toy stream? (issue 24)

    python benchmarks/overlapped_eval.py --rounds 4

A stream is, but for the first evaluation, slices of "evaluate every test set, then train the
next task". This times one such slice of a toy drslora run two ways:

- `sequential` (what the engine does): the evaluation at --threads intra-op threads, then the
  task's training at --threads;
- `overlapped`: a copy of the learner's eval model evaluated in a second Python thread while
  the main thread trains, each thread with --threads // 2 intra-op threads (the cores split
  between the two instead of both ops sharing them).

Each variant runs in its own process (a fresh model each time), alternately, round after
round, so the machine's drift falls on both alike. Each process reports its evaluation
counts and its trained weights' hash: the two variants must agree bit for bit before their
times mean anything (the overlap would be an engine change only if it left results as they
are). The figures are in docs/performance.md ("Evaluation overlapped with training").
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from cl_bench.api.toolkit import weights_fingerprint
from cl_bench.engine.config import RunConfig
from cl_bench.engine.loop import Engine, seed_everything


def _split(threads: int) -> int:
    """Intra-op threads of each side when overlapped: the cores shared out between the two."""
    return max(1, threads // 2)


def _slice(mode: str, threads: int, iterations: int, eval_limit: int | None) -> dict[str, Any]:
    """One evaluation + one task's training in `mode`; times, counts and the weights' hash."""
    per_side = threads if mode == "sequential" else _split(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(
            learner="drslora", iterations=iterations, out=f"{tmp}/run", threads=per_side,
            eval_limit=eval_limit, device="cpu",
        )  # fmt: skip
        engine = Engine(cfg)
        seed_everything(cfg.seed)
        parts = engine.prepare()
        learner = parts.learner
        parts.evaluator.cache.enabled = False  # every evaluation in a stream recomputes
        frozen = copy.deepcopy(learner.eval_model())  # what the overlapped evaluation scores

        class Frozen:  # the evaluator reads only these two from a plain learner
            custom_eval_logits = False

            @staticmethod
            def eval_model() -> torch.nn.Module:
                return frozen

        out: dict[str, Any] = {}

        def evaluate() -> None:
            torch.set_num_threads(per_side)  # this thread's own OpenMP team
            t0 = time.perf_counter()
            results = parts.evaluator.evaluate(Frozen(), "eval")  # type: ignore[arg-type]
            out["eval_s"] = time.perf_counter() - t0
            out["counts"] = [(r.dataset, r.correct, r.total) for r in results]

        def train() -> None:
            t0 = time.perf_counter()
            data, task, training = engine.open_task(0, parts)
            if training is not None:
                parts.trainer.train(
                    learner, training, data, parts.backbone.normalize, cfg.seed, [],
                    where=engine.directory.path,
                )  # fmt: skip
            learner.end_task(task)
            parts.trainer.end()
            out["train_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if mode == "sequential":
            evaluate()
            train()
        else:
            side = threading.Thread(target=evaluate)
            side.start()
            train()
            side.join()
        out["total_s"] = time.perf_counter() - t0
        out["weights"] = weights_fingerprint(parts.backbone.model)
    return out


def refuse_if_different(runs: dict[str, list[dict[str, Any]]]) -> None:
    """Exit (status 1) unless every run scored the same counts and trained the same weights:
    times of two different computations compare nothing."""
    same = {(json.dumps(r["counts"]), r["weights"]) for rs in runs.values() for r in rs}
    if len(same) != 1:
        n = sum(len(rs) for rs in runs.values())
        sys.exit(
            f"evaluation counts or trained weights DIFFERENT across the {n} runs: "
            "the overlap would change results, so its time is not reported"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=80, help="the toy budget per task")
    parser.add_argument("--eval-limit", type=int, default=None, help="images per test set")
    parser.add_argument("--worker", choices=("sequential", "overlapped"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_slice(args.worker, args.threads, args.iterations, args.eval_limit)))
        return
    runs: dict[str, list[dict[str, Any]]] = {"sequential": [], "overlapped": []}
    for i in range(args.rounds):
        order = ("sequential", "overlapped") if i % 2 == 0 else ("overlapped", "sequential")
        for mode in order:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode,
                   "--threads", str(args.threads), "--iterations", str(args.iterations)]  # fmt: skip
            if args.eval_limit is not None:
                cmd += ["--eval-limit", str(args.eval_limit)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    refuse_if_different(runs)
    print(
        f"{args.rounds} rounds, {args.threads} threads ({_split(args.threads)} per side "
        f"when overlapped), {args.iterations} iterations"
    )
    print("| variant | eval s | train s | slice s (median) | vs sequential | slices |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(r["total_s"] for r in runs["sequential"])
    for mode, rs in runs.items():
        total = statistics.median(r["total_s"] for r in rs)
        slices = ", ".join(f"{r['total_s']:.2f}" for r in rs)
        print(
            f"| {mode} | {statistics.median(r['eval_s'] for r in rs):.2f} | "
            f"{statistics.median(r['train_s'] for r in rs):.2f} | {total:.2f} | "
            f"{total / base:.3f} | {slices} |"
        )
    print(f"evaluation counts and trained weights: identical across all {2 * args.rounds} runs")


if __name__ == "__main__":
    main()
