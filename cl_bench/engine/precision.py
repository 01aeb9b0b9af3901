"""Numeric precision of a run: fp32, or autocast to bf16/fp16 with fp32 master weights.

Autocast only changes the dtype of the ops on its list (matmuls, convolutions, attention);
it wraps a learner's `loss` and the evaluation forwards. Parameters, optimizer state,
elementwise updates (drslora's soft-threshold, run in `after_step`) and the fp32 merges at
`end_task` stay fp32. Under fp16 the engine's trainer scales the loss with a
`torch.amp.GradScaler` (one code path for every learner; steps with inf/NaN gradients are
skipped and the scale lowered); non-finite logged losses still stop the run. Prefer bf16
where the hardware has it.
No torch import at module level (`clbench --help` stays fast).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from cl_bench.errors import UserError

if TYPE_CHECKING:
    import torch

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def check_precision(precision: str, device: str) -> None:
    """Refuse unknown names and fp16 on CPU (CPU autocast computes in bf16 only)."""
    if precision not in PRECISIONS:
        raise UserError(
            f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}"
        )
    if precision == "fp16" and device != "cuda":
        raise UserError(
            "--precision fp16 needs --device cuda (CPU autocast supports bf16 only); use --precision bf16 or fp32"
        )


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast compute dtype, or None for plain fp32."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The context that runs forward passes at `precision` on `device` (no-op for fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
