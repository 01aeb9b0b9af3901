"""gated_lora — Selective LoRA: one LoRA block per weight matrix behind a learnable hard gate,
active blocks merged after every task.

Method: W = W0 + I_τ(s) · B A per matrix, s a learnable score, I_τ(s) = 1 if s ≥ τ else 0 with
a straight-through estimator (identity gradient to s), loss = task loss + λ · mean_blocks |s|
(the TAPS-style indicator gating used by Selective LoRA; PROTOCOL.md §4). Reference code for
the gate: TAPS (Wallingford et al., "Task Adaptive Parameter Sharing", CVPR 2022,
github.com/MattWallingford/TAPS). Defaults from the TAPS reference code, labelled as such:
s₀ = 0.15, τ = 0.1, penalty averaged over the blocks; λ = 1 is the Selective LoRA paper's
CLIP value. Continual use as PROTOCOL.md §4 says: the drslora budget and targets
(q, k, v, out, fc, proj of both encoders, rank 16 at width 768, scaled with the width), fresh
blocks per task, active blocks merged in fp32 at the end of the task, inactive ones dropped.
The fraction of active blocks per task goes to ``gates.parquet`` (one row per block) and the
manifest.

Learning rate — a harness choice, not the paper's: the paper's CLIP runs use AdamW lr 1e-5,
wd 0.1, 500 warm-up steps then cosine, over a longer schedule. Under the 500-iteration
drslora budget that lr cannot work as Selective LoRA: Adam moves a score by at most about
lr per step, so a score starting at 0.15 travels ≤ 0.005 and never crosses τ = 0.1 — every
gate would stay open and the method would be plain LoRA at a 50× smaller lr (and the
500 warm-up steps would fill the whole task). So the adapters train with drslora's
optimizer (lr 5e-4, betas 0.9/0.9999, no warm-up, cosine), which makes lora, drslora and
gated_lora differ only in the adapter, and keep the paper's wd 0.1. With 500 steps at
5e-4 a score can travel ~0.25 and gates can close. The score's budget-dependent travel is
scaled like drslora's κ (PROTOCOL.md §5): the scores' lr is lr · 500 / iterations, 500 being
the drslora budget (`reference_iterations`; ×1 at that budget, ×6.25 on the toy's 80 steps),
derived at run time and noted in the manifest; `score_lr_budget_scaling=false` turns that off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cl_bench.api.learner import Task
from cl_bench.api.registry import register_learner
from cl_bench.learners.lora import CODYRA_ITERATIONS, LoRA
from cl_bench.models.lora import LoRAAdapter, LowRankBlock, find_sites


def gate_score(block: LowRankBlock) -> float:
    """The block's gate score s (the gated variant's blocks all have one)."""
    if block.gate_score is None:
        raise RuntimeError("gated_lora: a LoRA block without a gate score (not the gated variant)")
    return float(block.gate_score.detach())


@register_learner("gated_lora")
class GatedLoRA(LoRA):
    description = "Selective LoRA: hard-gated LoRA blocks (straight-through scores), active blocks merged after each task"
    variant = "gated"

    @dataclass
    class Config(LoRA.Config):
        weight_decay: float = 0.1  # the Selective LoRA paper's CLIP runs
        gate_init: float = 0.15  # TAPS reference code
        gate_threshold: float = 0.1  # τ, TAPS reference code
        gate_penalty: float = 1.0  # λ, Selective LoRA paper (CLIP)
        score_lr_budget_scaling: bool = True  # score lr × reference_iterations / iterations
        reference_iterations: int = CODYRA_ITERATIONS  # the drslora budget (PROTOCOL.md §4)

    def make_adapter(self) -> LoRAAdapter:
        sites = find_sites(self.model, self.cfg.encoders, self.cfg.kinds)
        return LoRAAdapter(
            self.model,
            sites,
            self.rank,
            "gated",
            gate_init=self.cfg.gate_init,
            gate_threshold=self.cfg.gate_threshold,
        )

    def trainable(self, task: Task) -> list[dict[str, Any]]:
        scores = self._adapter().gate_scores()
        score_ids = {id(s) for s in scores}
        factors = [p for p in self._adapter().parameters() if id(p) not in score_ids]
        scale = (
            self.cfg.reference_iterations / task.iterations
            if self.cfg.score_lr_budget_scaling
            else 1.0
        )
        self.ctx.note("gated_lora.score_lr", self.cfg.lr * scale)
        return [{"params": factors}, {"params": scores, "lr": self.cfg.lr * scale}]

    def extra_loss(self) -> tuple[torch.Tensor | None, dict[str, Any]]:
        scores = torch.stack(self._adapter().gate_scores())
        penalty = self.cfg.gate_penalty * scores.abs().mean()
        active = (scores.detach() >= self.cfg.gate_threshold).float().mean()
        return penalty, {"gate_penalty": penalty.detach(), "active_fraction": active}

    def before_merge(self, task: Task) -> None:
        rows = self.site_rows(task, lambda b: {"score": gate_score(b), "active": b.is_active()})
        self.ctx.record("gates", rows)
        fractions = dict(self.ctx.derived.get("gated_lora.active_fraction_per_task", {}))
        fractions[task.name] = round(sum(r["active"] for r in rows) / len(rows), 4)
        self.ctx.note("gated_lora.active_fraction_per_task", fractions)
