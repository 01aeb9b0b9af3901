"""Collectives a learner may use under torchrun: `gather_batch` for loss terms that couple
the images of a batch. Identity in one process. The process group itself is the engine's
(`cl_bench.engine.distributed`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 whose backward returns this rank's rows of the gradient, times
    the world size.

    Every rank computes the same loss from the gathered tensor, so the gradient every rank
    holds for rank r's rows is the same; the true backward of an all-gather (the sum over
    ranks of those gradients) is world_size times it. Computing it locally saves a
    collective in backward, and it works on gloo, which has no reduce-scatter.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        # ctx: torch's FunctionCtx, which carries the attributes set here (rows, world, rank)
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows, ctx.world, ctx.rank = tensor.shape[0], world, rank
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        rows: int = ctx.rows
        world: int = ctx.world
        rank: int = ctx.rank
        start = rank * rows
        return grad[start : start + rows] * world


def gather_batch(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows of every rank's shard of the batch, in global batch order (identity in one process).

    For loss terms that couple the images of a batch (softmax over the batch's images):
    compute them on the gathered tensors, identically on every rank. Gradients flow back to
    this rank's rows; integer tensors (labels) are gathered without gradient.
    """
    if not active():
        return tensors
    out = []
    for t in tensors:
        if t.requires_grad:
            out.append(_GatherRows.apply(t))
        else:
            parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, t.contiguous())
            out.append(torch.cat(parts))
    return tuple(out)
