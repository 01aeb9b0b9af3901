"""`clbench bench`: what the harness costs on top of the work it cannot avoid, in one run.

Training: N steps through the engine's own path (`Trainer.train`: batch sampling from the
uint8 ImageSet, upload, normalization, the step, the scalar bookkeeping with its host sync
every `log_every` steps, progress) against a bare loop that calls the same `Trainer.step` of
the same learner (same model, same optimizer: loss, backward, optimizer and schedule step,
`after_step`) on the same batches pre-materialised on the device. The step is the work a run
cannot avoid, so engine/bare isolates exactly what the engine adds around it (DESIGN.md,
"Benchmarking the harness").

Evaluation: `Evaluator.evaluate` (its `EvalCache` included, as in a run) against a bare pass:
the text classifiers computed once per dataset, then a plain `encode_image` over test images
pre-normalized on the device, scored against the union classifier (X-TAIL) or each dataset's
own. Both must count the same correct predictions; a mismatch is a bug and stops the bench.

Robustness on a shared machine: each repeat is one task (begin_task, engine and bare
training, end_task, engine and bare evaluation). Training alternates engine and bare blocks of
`BLOCK_STEPS` steps (each block replays the same batches); an evaluation is timed as
`EVAL_SLICES` interleaved slices (every k-th image of every test set; the text classifiers are
computed on the first slice by both paths, the engine through its cache), the order flipping
each time; a repeat's ratio compares measurements taken
under the same load, and the reported ratio is the median over repeats. Process CPU time is
reported beside wall time: on a machine shared by many, CPU time is the stable measure (and
approximates the wall time of an idle machine with one thread). The load average is reported
alongside.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cl_bench.analysis.provenance import peak_rss_mb
from cl_bench.api.learner import Batch, StepInfo, Task
from cl_bench.data.scoring import prompt_classifier
from cl_bench.data.world import DataWorld, ImageSet
from cl_bench.engine.config import RunConfig
from cl_bench.engine.evaluator import EvalCache, text_classifier
from cl_bench.engine.loop import Engine, Evaluator, seed_everything
from cl_bench.engine.precision import autocast
from cl_bench.engine.trainer import BatchStream, TaskTraining, Trainer
from cl_bench.errors import RunFailed, UserError

BLOCK_STEPS = 10  # training is timed in interleaved blocks (= the default log_every)
EVAL_SLICES = 4  # one evaluation is timed as this many interleaved slices of every test set


def _slices(test_sets: dict[str, ImageSet], k: int) -> list[dict[str, ImageSet]]:
    """Every k-th image of every test set, k ways: together exactly one evaluation's images."""
    return [
        {
            n: ImageSet(
                np.ascontiguousarray(t.images[i::k]),
                np.asarray(t.labels[i::k]),
                f"{t.ids_hash}-slice{i}of{k}",
            )
            for n, t in test_sets.items()
        }
        for i in range(k)
    ]


@dataclass
class BenchResult:
    setting: str
    learner: str
    world: str
    device: str
    precision: str
    steps: int
    repeats: int
    batch_size: int
    eval_images: int
    train_ratio: float  # median over repeats of engine time / bare time
    eval_ratio: float
    train_steps_per_s: float  # engine, median over repeats
    eval_images_per_s: float  # engine, median over repeats
    bare_train_steps_per_s: float
    bare_eval_images_per_s: float
    train_cpu_ms_per_step: float  # engine, process CPU time: what an idle machine would take
    eval_images_per_cpu_s: float
    peak_rss_mb: float  # whole bench process (engine + the bare path's pre-materialised copies)
    peak_cuda_mb: float | None
    train_ratios: list[float] = field(default_factory=list)
    eval_ratios: list[float] = field(default_factory=list)
    train_cpu_ratio: float = float("nan")  # process CPU time ratio (less sensitive to load)
    eval_cpu_ratio: float = float("nan")
    text_cache: dict[str, int] = field(default_factory=dict)  # engine evaluations, summed
    torch_threads: int = 0
    load_average_1min: tuple[float, float] = (0.0, 0.0)  # before, after
    # CUDA only (None elsewhere): host syncs the engine makes, counted by torch's sync debug mode
    train_host_syncs_per_step: float | None = None
    eval_host_syncs_per_dataset: float | None = None
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; NaN (no training for a non-training learner) becomes None."""
        return {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in asdict(self).items()
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """(wall s, process CPU s, result) of fn(), with the device drained on both ends."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def count_host_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """How many times fn() blocks the host on the device (CUDA; elsewhere None, fn not run).

    torch's sync debug mode warns at every synchronizing CUDA call (`.item()`, a blocking
    copy, `nonzero`, ...); the engine promises none per training step beyond its scalar
    bookkeeping every `log_every` steps, and one per dataset per evaluation."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing CUDA operation" in str(w.message) for w in caught)


def _bare_train(trainer: Trainer, learner, training: TaskTraining, batches, task: Task) -> None:
    """The same step on pre-materialised batches in a plain loop (no sampling, no logging)."""
    learner.model.train()
    total = len(batches)
    for step, (images, labels) in enumerate(batches):
        trainer.step(
            learner,
            training,
            Batch(images, labels, task.text_tokens, task.index),
            StepInfo(step, total, task.index, task.num_tasks),
        )


def _bare_eval(
    model,
    tokenize,
    infos,
    stream,
    holdout,
    task_agnostic,
    images,
    labels,
    device,
    precision,
    plan=None,
    union_classifier=None,
) -> tuple[dict[str, int], list]:
    """Text classifiers once per dataset (unless `plan` holds them from an earlier slice of
    the same evaluation) + a plain forward over pre-normalized test images."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device, precision):
            if plan is None:
                names = tuple(dict.fromkeys(stream + holdout))
                clf = {  # the engine's classifiers: template-averaged, or one prompt per class
                    n: text_classifier(model, tokenize, infos[n], device)
                    if union_classifier is None
                    else prompt_classifier(
                        model, tokenize, infos[n].union_prompts(union_classifier), device
                    )
                    for n in names
                }
                plan = []
                if task_agnostic:
                    union = torch.cat([clf[n] for n in stream])
                    offsets = np.cumsum([0] + [infos[n].num_classes for n in stream])[:-1]
                    plan += [(n, union, int(o)) for n, o in zip(stream, offsets, strict=True)]
                else:
                    plan += [(n, clf[n], 0) for n in stream]
                plan += [(n, clf[n], 0) for n in holdout]
            correct = {}
            for name, classifier, offset in plan:
                count = torch.zeros((), dtype=torch.long, device=device)
                for x, y in zip(images[name], labels[name], strict=True):
                    feats = F.normalize(model.encode_image(x).float(), dim=-1)
                    # scored in fp32 as the engine scores (outside autocast): under bf16/fp16
                    # a low-precision score matmul would flip near-ties and the counts differ
                    with torch.autocast(device.type, enabled=False):
                        count += (feats @ classifier.T).argmax(dim=1).eq(y + offset).sum()
                correct[name] = count
        return {n: int(c) for n, c in correct.items()}, plan
    finally:
        model.train(was_training)


def _engine_eval(evaluator: Evaluator, learner, test_sets: dict[str, ImageSet]) -> list:
    """The engine's evaluation of one slice of every test set."""
    evaluator.test_sets = test_sets
    return evaluator.evaluate(learner, "bench")


def _materialise_eval(engine: Engine, backbone, test_sets, batch_size: int):
    """Test images normalized on the device in eval-size batches, and their labels."""
    images, labels = {}, {}
    with torch.inference_mode():
        for name, s in test_sets.items():
            images[name] = [
                backbone.normalize(
                    torch.from_numpy(np.array(s.images[i : i + batch_size])).to(engine.device)
                )
                for i in range(0, len(s), batch_size)
            ]
            labels[name] = [
                torch.from_numpy(np.asarray(s.labels[i : i + batch_size], dtype=np.int64)).to(
                    engine.device
                )
                for i in range(0, len(s), batch_size)
            ]
    return images, labels


def _materialise_train(engine: Engine, backbone, train, steps: int, batch_size: int, seed: int):
    """The engine's batch sequence for task 0 (same BatchStream seed), normalized on the device."""
    stream = BatchStream(train, batch_size, seed, 0)
    out = []
    for _ in range(steps):
        idx = stream.next_indices()
        x = torch.from_numpy(np.ascontiguousarray(train.images[idx])).to(engine.device)
        y = torch.from_numpy(np.asarray(train.labels[idx], dtype=np.int64)).to(engine.device)
        out.append((backbone.normalize(x), y))
    return out


def run_bench(
    setting: str = "xtail",
    learner: str = "drslora",
    world: str = "toy",
    steps: int = 40,
    repeats: int = 3,
    device: str = "cpu",
    precision: str = "fp32",
    eval_limit: int | None = None,
    seed: int = 0,
    world_obj: DataWorld | None = None,
    overrides: dict[str, str] | None = None,
    threads: int | None = None,
) -> BenchResult:
    """Measure engine vs bare training and evaluation; see the module docstring."""
    if steps < 1 or repeats < 1:
        raise UserError(f"--steps and --repeats must be >= 1, got {steps} and {repeats}")
    block = min(steps, BLOCK_STEPS)  # steps per engine call / bare loop, interleaved
    blocks = steps // block
    steps = blocks * block
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clbench-bench-") as tmp:
        cfg = RunConfig(
            setting=setting, learner=learner, world=world, iterations=block, seed=seed,
            out=os.path.join(tmp, "run"), device=device, precision=precision,
            eval_limit=eval_limit, overrides=dict(overrides or {}), threads=threads,
        )  # fmt: skip
        engine = Engine(cfg, world=world_obj)
        s = engine.setting
        seed_everything(seed)
        parts = engine.prepare()
        backbone, infos, test_sets = parts.backbone, parts.infos, parts.test_sets
        parts.ctx.current_task = 1
        learn, trainer = parts.learner, parts.trainer
        name = s.datasets[0]
        train = engine.world.load_split(name, "train", s.shots, s.split_seed, backbone.image_size)
        task = replace(engine.make_task(0, parts, train), iterations=block)
        holdout = tuple(h for h in s.holdout if h not in s.datasets)
        train_batches = _materialise_train(engine, backbone, train, block, s.batch_size, seed)
        slices = _slices(test_sets, EVAL_SLICES)
        bare_data = [_materialise_eval(engine, backbone, sl, cfg.eval_batch_size) for sl in slices]
        eval_images = sum(len(t) for t in test_sets.values())
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(engine.device)

        tr: dict[str, list[tuple[float, float]]] = {"engine": [], "bare": []}
        ev: dict[str, list[tuple[float, float]]] = {"engine": [], "bare": []}
        phases: dict[str, Callable[..., Any]]  # lambdas binding loop variables as defaults
        cache_stats: dict[str, int] = {}
        trains = False
        for r in range(repeats):
            learn.begin_task(task)
            training = trainer.begin(learn, task)
            trains = training is not None
            if training is not None:
                if r == 0:  # warm-up: allocator, kernels, first-call costs
                    _bare_train(trainer, learn, training, train_batches[:2], task)
                phases = {
                    "engine": lambda training=training: trainer.train(
                        learn, training, train, backbone.normalize, seed, []
                    ),
                    "bare": lambda training=training: _bare_train(
                        trainer, learn, training, train_batches, task
                    ),
                }
                sums = {"engine": [0.0, 0.0], "bare": [0.0, 0.0]}
                for b in range(blocks):  # fine interleaving: both paths see the same load
                    for kind in ("engine", "bare") if (r + b) % 2 == 0 else ("bare", "engine"):
                        wall, cpu, _ = _timed(phases[kind], engine.device)
                        sums[kind][0] += wall
                        sums[kind][1] += cpu
                for kind, (wall, cpu) in sums.items():
                    tr[kind].append((wall, cpu))
            learn.end_task(task)
            trainer.end()
            sums = {"engine": [0.0, 0.0], "bare": [0.0, 0.0]}
            counts: dict[str, dict[str, int]] = {"engine": {}, "bare": {}}
            plan = None  # the bare path's classifiers, computed on the first slice
            if trains:
                # As after a task that changed both towers: no cache hit is credited (the
                # bench's short blocks may leave a model bit-identical, e.g. drslora pruning
                # every rank), the snapshot cost is paid.
                parts.evaluator.cache = EvalCache()
            for i, (sl, (ex, ey)) in enumerate(zip(slices, bare_data, strict=True)):
                phases = {
                    "engine": lambda sl=sl: _engine_eval(parts.evaluator, learn, sl),
                    "bare": lambda ex=ex, ey=ey, plan=plan: _bare_eval(
                        learn.eval_model(), backbone.tokenizer, infos, s.datasets, holdout,
                        s.task_agnostic, ex, ey, engine.device, precision, plan,
                        s.union_classifier if s.task_agnostic else None,
                    ),
                }  # fmt: skip
                for kind in ("engine", "bare") if (r + i) % 2 == 0 else ("bare", "engine"):
                    before = parts.evaluator.cache.stats()
                    wall, cpu, out = _timed(phases[kind], engine.device)
                    sums[kind][0] += wall
                    sums[kind][1] += cpu
                    if kind == "engine":
                        for k, v in parts.evaluator.cache.stats().items():
                            cache_stats[k] = cache_stats.get(k, 0) + v - before[k]
                        got = {r.dataset: r.correct for r in out}
                    else:
                        got, plan = out
                    for n, c in got.items():
                        counts[kind][n] = counts[kind].get(n, 0) + c
            for kind, (wall, cpu) in sums.items():
                ev[kind].append((wall, cpu))
            # fp32: the counts must be equal. bf16/fp16: reduced-precision kernels may round a
            # near-tie differently in the two paths; up to 1 % of the images may move.
            moved = sum(
                abs(counts["engine"][n] - counts["bare"].get(n, 0)) for n in counts["engine"]
            )
            allowed = 0 if precision == "fp32" else max(1, eval_images // 100)
            if set(counts["engine"]) != set(counts["bare"]) or moved > allowed:
                raise RunFailed(
                    f"bench: engine and bare evaluation disagree ({counts['engine']} vs {counts['bare']}); this is a harness bug"
                )

        # last: host syncs of one more engine training block and one engine evaluation slice
        train_syncs: float | None = None
        eval_syncs: float | None = None
        if engine.device.type == "cuda":
            learn.begin_task(task)
            training = trainer.begin(learn, task)
            if training is not None:
                n = count_host_syncs(
                    lambda: trainer.train(learn, training, train, backbone.normalize, seed, []),
                    engine.device,
                )
                train_syncs = None if n is None else n / block
            learn.end_task(task)
            trainer.end()
            parts.evaluator.cache = EvalCache()
            n = count_host_syncs(
                lambda: _engine_eval(parts.evaluator, learn, slices[0]), engine.device
            )
            eval_syncs = None if n is None else n / len(slices[0])

    def ratio(d, i):
        return [e[i] / b[i] for e, b in zip(d["engine"], d["bare"], strict=True)]

    def median_rate(d, kind, amount, i=0):
        return amount / statistics.median(x[i] for x in d[kind]) if d[kind] else float("nan")

    nan = float("nan")
    return BenchResult(
        setting=setting,
        learner=engine.learner_cls.name,
        world=engine.world.name,
        device=device,
        precision=precision,
        steps=steps,
        repeats=repeats,
        batch_size=s.batch_size,
        eval_images=eval_images,
        train_ratio=statistics.median(ratio(tr, 0)) if tr["engine"] else nan,
        eval_ratio=statistics.median(ratio(ev, 0)),
        train_steps_per_s=median_rate(tr, "engine", steps),
        eval_images_per_s=median_rate(ev, "engine", eval_images),
        bare_train_steps_per_s=median_rate(tr, "bare", steps),
        bare_eval_images_per_s=median_rate(ev, "bare", eval_images),
        train_cpu_ms_per_step=1e3 / median_rate(tr, "engine", steps, 1) if tr["engine"] else nan,
        eval_images_per_cpu_s=median_rate(ev, "engine", eval_images, 1),
        peak_rss_mb=round(peak_rss_mb(), 1),
        peak_cuda_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if engine.device.type == "cuda"
        else None,
        train_ratios=[round(x, 4) for x in ratio(tr, 0)],
        eval_ratios=[round(x, 4) for x in ratio(ev, 0)],
        train_cpu_ratio=statistics.median(ratio(tr, 1)) if tr["engine"] else nan,
        eval_cpu_ratio=statistics.median(ratio(ev, 1)),
        text_cache=cache_stats,
        torch_threads=torch.get_num_threads(),
        load_average_1min=(round(load_before, 2), round(os.getloadavg()[0], 2)),
        train_host_syncs_per_step=train_syncs,
        eval_host_syncs_per_dataset=eval_syncs,
        wall_s=round(time.perf_counter() - started, 1),
    )


def format_result(r: BenchResult) -> str:
    """The human-readable report of one bench run."""
    lines = [
        f"clbench bench: {r.learner} on {r.world}/{r.setting}, {r.device} {r.precision}, "
        f"{r.steps} steps x batch {r.batch_size}, {r.eval_images} eval images, "
        f"median of {r.repeats}, {r.torch_threads} torch threads",
        f"  train  engine {r.train_steps_per_s:8.2f} steps/s   bare {r.bare_train_steps_per_s:8.2f} steps/s"
        f"   ratio {r.train_ratio:.3f}  (repeats {r.train_ratios}; cpu-time ratio {r.train_cpu_ratio:.3f})",
        f"  eval   engine {r.eval_images_per_s:8.1f} img/s     bare {r.bare_eval_images_per_s:8.1f} img/s"
        f"     ratio {r.eval_ratio:.3f}  (repeats {r.eval_ratios}; cpu-time ratio {r.eval_cpu_ratio:.3f})",
        f"  process CPU time (engine): {r.train_cpu_ms_per_step:.0f} ms/step, "
        f"{r.eval_images_per_cpu_s:.0f} images per CPU-second",
        f"  text classifier cache: {r.text_cache}",
        f"  peak RSS {r.peak_rss_mb:.0f} MB"
        + (f", peak CUDA {r.peak_cuda_mb:.0f} MB" if r.peak_cuda_mb is not None else "")
        + f"; load average (1 min) {r.load_average_1min[0]} -> {r.load_average_1min[1]}; {r.wall_s} s",
    ]
    if r.train_host_syncs_per_step is not None or r.eval_host_syncs_per_dataset is not None:
        lines.append(
            f"  host syncs: {r.train_host_syncs_per_step} per training step, "
            f"{r.eval_host_syncs_per_dataset} per dataset per evaluation"
        )
    return "\n".join(lines)
