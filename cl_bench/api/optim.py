"""Optimizer and schedule helpers shared by learners (public API for custom learners too)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up to 1 over `warmup_steps`, then cosine to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))

    return factor


def warmup_steps_for(total_steps: int, warmup_fraction: float) -> int:
    """A schedule given in paper steps, as a fraction of the run's steps (>= 1 when > 0)."""
    return max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0


def adamw_warmup_cosine(
    params,
    lr: float,
    weight_decay: float,
    total_steps: int,
    warmup_fraction: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW + warm-up/cosine LambdaLR, stepped once per optimizer step."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    schedule = warmup_cosine(total_steps, warmup_steps_for(total_steps, warmup_fraction))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
