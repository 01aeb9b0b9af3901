"""drslora — CoDyRA: continual dynamic rank-selective LoRA, merged after every task.

Paper: CoDyRA, "Continual Dynamic Rank-selective Adaptation for vision-language models"
(Lu et al., 2024). Reference code: github.com/Artificer-AI-Lab/CoDyRA
(``models/codyra.py`` train loop and proximal step, ``loralib/codyra.py`` adapter and merge,
``runner_codyra.sh`` defaults: rank 16, all encoders, qkvoinout, lr 5e-4, 500 iterations,
max_kappa 0.005, dense_iters 0.5).

Per task: fresh adapters ΔW = B · diag(w) · A (A Kaiming-uniform, B = 0, w ~ N(0, 1), no α/r
scaling) on q, k, v, out, fc, proj of both encoders; the contrastive loss with CoDyRA's
text→image weighting (`cl_bench.learners.lora`); AdamW lr 5e-4, betas 0.9/0.9999, wd 0,
cosine. The first `dense_fraction` of the steps train densely (0.5 task-agnostic X-TAIL, 0.7
MTIL); after every optimizer step of the sparse phase a proximal step on w runs with κ from a
staircase linspace(0, κ_max, 50). κ is the threshold itself, not multiplied by the lr. After
the task, ranks with w = 0 are dropped (they contribute exactly nothing), the rest is merged
in fp32, and the next task gets fresh adapters. Surviving ranks per task and matrix go to
``ranks.parquet`` (the paper's rank-allocation plots).

The proximal step, `proximal="reference"` (default) as ``models/codyra.py`` `train_model`
does it: the level index moves up at every iteration i >= dense with i % (sparse // 50) == 0
(so before the first sparse step too), the threshold runs when i > dense, and it is three
sequential in-place updates ``w[w>κ] -= κ; w[w<-κ] += κ; w[|w|<κ] = 0``: any |w| < 2κ ends at
0 (except |w| = κ exactly), larger ones shrink by κ. Σκ at CoDyRA's 500 iterations: 0.650
(X-TAIL, dense 0.5) and 0.385 (MTIL, dense 0.7); at full-shot MTIL's 1000 iterations 0.770.
`proximal="textbook"` is the form of the paper and PROTOCOL.md §4 that cl-bench used
before: the soft threshold w ← sign(w) · max(|w| − κ, 0) from the first sparse step on, the
staircase starting at its first value (0) and advancing every (sparse // 50) steps: Σκ 0.625
(X-TAIL) / 0.375 (MTIL).

Budget scaling (PROTOCOL.md §5), derived at run time and written to the manifest:
- rank r = max(2, round(16 · width / 768)) (16 at ViT-B/16's width, 3 at the toy's 128);
- κ schedule "paper_total" (default on the toy world): at the toy's 80 iterations the
  reference loop would never leave level 0 (sparse // 50 = 0: no shrinkage at all), so the
  schedule of CoDyRA's own budget (I = `reference_iterations` = 500 iterations per task) is
  resampled onto the run's sparse phase (run sparse step j takes the paper's sparse step
  floor(j · S_paper / S_run)) and scaled so that its total Σκ equals the paper budget's
  (0.650 X-TAIL, 0.385 MTIL with the reference proximal step). With `proximal="textbook"`
  the textbook staircase is compressed instead (level floor(j · 50 / S_run), or
  floor(j · 49 / (S_run − 1)) when S_run < 50) and scaled to its own total (0.625 / 0.375),
  exactly as cl-bench did before. Full-shot MTIL uses the same
  total: CoDyRA has no full-shot budget of its own (its runner trains 500 iterations; 1000 is
  ZSCL's full-fine-tuning budget). When the run's iterations equal 500 the resampled
  schedule is the paper's exactly.
- κ schedule "official" (default on the real world): the schedule of the chosen proximal
  form at the run's own iterations, as is.

Deviations from the reference code:
- The adapted attention keeps its packed q/k/v projection: see `cl_bench.learners.lora`.
- Pruned ranks are not physically sliced away before the merge; their w is exactly 0, so
  B · diag(w) · A is the same matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from cl_bench.api.context import RunContext
from cl_bench.api.learner import StepInfo, Task
from cl_bench.api.registry import register_learner
from cl_bench.errors import UserError
from cl_bench.learners.lora import CODYRA_ITERATIONS, LoRA
from cl_bench.models.backbone import Backbone

KappaSchedule = Literal["auto", "paper_total", "official"]


Proximal = Literal["reference", "textbook"]


@torch.no_grad()
def soft_threshold_(w: torch.Tensor, kappa: float) -> None:
    """Proximal step of κ‖w‖₁ in place: w ← sign(w) · max(|w| − κ, 0) (the textbook form)."""
    if kappa > 0:
        w.copy_(torch.sign(w) * torch.clamp(w.abs() - kappa, min=0.0))


@torch.no_grad()
def reference_threshold_(w: torch.Tensor, kappa: float) -> None:
    """CoDyRA's three sequential in-place updates (``models/codyra.py``): shrink by κ, then
    zero what is below κ after the shrink — every |w| < 2κ ends at 0 (|w| = κ stays κ)."""
    w[w > kappa] -= kappa
    w[w < -kappa] += kappa
    w[w.abs() < kappa] = 0.0


PROXIMAL_STEPS = {"reference": reference_threshold_, "textbook": soft_threshold_}


def reference_schedule(
    iterations: int, dense_fraction: float, kappa_max: float, levels: int = 50
) -> np.ndarray:
    """κ applied after each step by CoDyRA's loop (0 where it does not threshold).

    The level index starts at 0 and moves up at every iteration i >= dense with
    i % step == 0, step = int((I − dense) // levels), before that step's threshold; the
    threshold runs when i > dense; dense = dense_fraction · I (a float, as in the reference).
    """
    values = np.linspace(0.0, kappa_max, levels)
    dense = dense_fraction * iterations
    step = int((iterations - dense) // levels)
    kappas = np.zeros(iterations)
    level = 0
    for i in range(iterations):
        if step > 0 and i >= dense and i % step == 0:
            level += 1
        if i > dense:
            kappas[i] = values[min(levels - 1, level)]
    return kappas


def official_staircase(sparse_steps: int, kappa_max: float, levels: int = 50) -> np.ndarray:
    """The textbook staircase per sparse step: linspace(0, κ_max, levels), next value every
    sparse_steps // levels steps, from the first sparse step on."""
    values = np.linspace(0.0, kappa_max, levels)
    interval = max(1, sparse_steps // levels)
    idx = np.minimum(np.arange(sparse_steps) // interval, levels - 1)
    return values[idx]


def compressed_staircase(sparse_steps: int, kappa_max: float, levels: int = 50) -> np.ndarray:
    """The textbook staircase squeezed onto `sparse_steps` steps, from level 0 to the last.

    S >= levels: level floor(j · levels / S) (the official staircase when S is a multiple of
    `levels`); S < levels: level floor(j · (levels − 1) / (S − 1)), so no step is wasted at
    κ = 0 twice and the last step still reaches κ_max.
    """
    values = np.linspace(0.0, kappa_max, levels)
    if sparse_steps == 1:
        return values[-1:].copy()
    j = np.arange(sparse_steps)
    idx = (
        j * levels // sparse_steps
        if sparse_steps >= levels
        else j * (levels - 1) // (sparse_steps - 1)
    )
    return values[np.minimum(idx, levels - 1)]


def sparse_steps_of(iterations: int, dense_fraction: float) -> int:
    return iterations - int(round(dense_fraction * iterations))


def full_schedule(
    iterations: int, dense_fraction: float, kappa_max: float, levels: int, proximal: Proximal
) -> np.ndarray:
    """κ after every step of a task at its own budget, in the chosen proximal form."""
    if proximal == "reference":
        return reference_schedule(iterations, dense_fraction, kappa_max, levels)
    sparse = sparse_steps_of(iterations, dense_fraction)
    kappas = np.zeros(iterations)
    if sparse > 0:
        kappas[iterations - sparse :] = official_staircase(sparse, kappa_max, levels)
    return kappas


def resampled(paper: np.ndarray, paper_sparse: int, sparse: int) -> np.ndarray:
    """The paper's sparse phase (its last `paper_sparse` steps) resampled onto `sparse` steps:
    run step j takes paper step floor(j · paper_sparse / sparse) (the identity when equal)."""
    phase = paper[len(paper) - paper_sparse :]
    return phase[np.arange(sparse) * paper_sparse // sparse]


def kappa_schedule(
    iterations: int,
    dense_fraction: float,
    kappa_max: float,
    levels: int,
    schedule: Literal["paper_total", "official"],
    paper_iterations: int,
    proximal: Proximal = "reference",
) -> tuple[np.ndarray, dict[str, float]]:
    """κ for every step of a task (0 where no proximal step runs) and the manifest's facts."""
    sparse = sparse_steps_of(iterations, dense_fraction)
    paper = full_schedule(paper_iterations, dense_fraction, kappa_max, levels, proximal)
    paper_total = float(paper.sum())
    if schedule == "official" or (iterations == paper_iterations and proximal == "reference"):
        kappas = full_schedule(iterations, dense_fraction, kappa_max, levels, proximal)
    else:
        kappas = np.zeros(iterations)
        paper_sparse = sparse_steps_of(paper_iterations, dense_fraction)
        if sparse > 0 and paper_sparse > 0:
            stairs = (
                resampled(paper, paper_sparse, sparse)
                if proximal == "reference"
                else compressed_staircase(sparse, kappa_max, levels)
            )
            if stairs.sum() > 0:  # all zero (κ_max = 0 or one level): no shrinkage, not 0/0
                kappas[iterations - sparse :] = stairs * (paper_total / stairs.sum())
    facts = {
        "dense_steps": iterations - sparse,
        "sparse_steps": sparse,
        "kappa_total": float(kappas.sum()),
        "kappa_total_paper": paper_total,
        "kappa_last": float(kappas[-1]) if iterations else 0.0,
    }
    return kappas, facts


@register_learner("drslora")
class DRSLoRA(LoRA):
    description = (
        "CoDyRA: LoRA with importance weights pruned by a proximal ℓ1 step, merged after each task"
    )
    variant = "importance"

    @dataclass
    class Config(LoRA.Config):
        kappa_max: float = 0.005
        kappa_levels: int = 50
        kappa_schedule: KappaSchedule = (
            "auto"  # auto: paper_total on the toy world, official on real
        )
        dense_fraction: float | None = (
            None  # None: 0.5 task-agnostic (X-TAIL), 0.7 otherwise (MTIL)
        )
        reference_iterations: int = CODYRA_ITERATIONS  # the budget Σκ is taken from
        # "reference": CoDyRA's loop and its three in-place updates; "textbook": the
        # soft threshold on the paper's staircase (cl-bench before; PROTOCOL.md §4)
        proximal: Proximal = "reference"

    def __init__(self, backbone: Backbone, cfg: DRSLoRA.Config, ctx: RunContext) -> None:
        super().__init__(backbone, cfg, ctx)
        self.dense_fraction = (
            cfg.dense_fraction
            if cfg.dense_fraction is not None
            else (0.5 if ctx.task_agnostic else 0.7)
        )
        if not 0.0 <= self.dense_fraction <= 1.0:
            raise UserError(f"--set dense_fraction={cfg.dense_fraction}: must lie in [0, 1]")
        if cfg.kappa_levels < 1 or cfg.kappa_max < 0:
            raise UserError("--set kappa_levels must be >= 1 and kappa_max >= 0")
        if cfg.reference_iterations < 1:
            raise UserError("--set reference_iterations must be >= 1")
        if cfg.proximal not in PROXIMAL_STEPS:
            raise UserError(f"--set proximal={cfg.proximal}: use reference or textbook")
        self.proximal_step = PROXIMAL_STEPS[cfg.proximal]
        self.schedule_kind: Literal["paper_total", "official"] = (
            cfg.kappa_schedule
            if cfg.kappa_schedule != "auto"
            else ("paper_total" if ctx.world == "toy" else "official")
        )
        ctx.note("drslora.dense_fraction", self.dense_fraction)
        ctx.note("drslora.kappa_schedule", self.schedule_kind)
        ctx.note("drslora.proximal", cfg.proximal)
        self.kappas = np.zeros(0)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.kappas, facts = kappa_schedule(
            task.iterations,
            self.dense_fraction,
            self.cfg.kappa_max,
            self.cfg.kappa_levels,
            self.schedule_kind,
            self.cfg.reference_iterations,
            self.cfg.proximal,
        )
        self.ctx.note("drslora.kappa", facts)

    def after_step(self, step: StepInfo) -> dict[str, Any]:
        kappa = float(self.kappas[step.step]) if step.step < len(self.kappas) else 0.0
        if kappa > 0:
            for w in self._adapter().importances():
                self.proximal_step(w, kappa)
        return {"kappa": kappa}

    def before_merge(self, task: Task) -> None:
        rows = self.site_rows(task, lambda b: {"rank": b.rank, "surviving": b.surviving_ranks()})
        self.ctx.record("ranks", rows)
        surviving = sum(r["surviving"] for r in rows)
        total = sum(r["rank"] for r in rows)
        fractions = dict(self.ctx.derived.get("drslora.surviving_fraction_per_task", {}))
        fractions[task.name] = round(surviving / total, 4)
        self.ctx.note("drslora.surviving_fraction_per_task", fractions)
