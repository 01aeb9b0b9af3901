"""Accuracy matrix -> Transfer / Average / Last, hold-out transfer, gain, forgetting.

Exactly PROTOCOL.md §1 (the ZSCL / MoE-Adapter / RAIL / CoDyRA reference formulas).
`acc` has shape (T + 1, T): row 0 is the zero-shot model (reported, never in a metric),
row t the model after task t; column j the stream dataset learned at task j (1-based).
Row 0 may be absent (all NaN): a published matrix imported without its zero-shot row
(`cl_bench.analysis.importer`). Gain, which needs it, is then NaN; nothing else uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cl_bench.errors import UserError


@dataclass(frozen=True)
class StreamMetrics:
    transfer: np.ndarray  # per dataset; NaN for dataset 1 (no Transfer)
    average: np.ndarray
    last: np.ndarray
    gain: float  # mean_j acc[j, j] - acc[0, j]
    forgetting: float  # mean_{j<T} acc[j, j] - acc[T, j]; NaN when T = 1

    @property
    def transfer_mean(self) -> float:
        return float(np.mean(self.transfer[1:])) if self.transfer.size > 1 else float("nan")

    @property
    def average_mean(self) -> float:
        return float(np.mean(self.average))

    @property
    def last_mean(self) -> float:
        return float(np.mean(self.last))


def _check(acc: np.ndarray, name: str) -> np.ndarray:
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 2 or acc.shape[0] < 2:
        raise UserError(
            f"{name}: expected a (T+1) x N matrix with the zero-shot row and >= 1 task row, got shape {acc.shape}"
        )
    missing = np.isnan(acc)
    if np.isnan(acc[0]).all():  # no zero-shot row (an imported matrix): only gain needs it
        missing[0] = False
    if missing.any():
        rows = sorted({int(r) for r in np.argwhere(missing)[:, 0]})
        raise UserError(
            f"{name}: missing accuracies after task(s) {rows}; the run is incomplete (resume it)"
        )
    return acc


def stream_metrics(acc: np.ndarray) -> StreamMetrics:
    acc = _check(acc, "stream accuracy matrix")
    num_tasks = acc.shape[0] - 1
    if acc.shape[1] != num_tasks:
        raise UserError(f"stream accuracy matrix must be (T+1) x T, got {acc.shape}")
    trained = acc[1:]  # rows t = 1..T
    transfer = np.full(num_tasks, np.nan)
    for j in range(1, num_tasks):  # 0-based column j is dataset j+1; rows t=1..j
        transfer[j] = trained[:j, j].mean()
    average = trained.mean(axis=0)
    last = trained[-1].copy()
    diag = np.diagonal(trained)
    gain = float(np.mean(diag - acc[0]))  # NaN without a zero-shot row
    forgetting = float(np.mean(diag[:-1] - last[:-1])) if num_tasks > 1 else float("nan")
    return StreamMetrics(transfer, average, last, gain, forgetting)


def holdout_transfer(acc: np.ndarray) -> np.ndarray:
    """Mean over tasks t = 1..T of each hold-out dataset's accuracy: shape (H,)."""
    acc = _check(acc, "hold-out accuracy matrix")
    return acc[1:].mean(axis=0)


def mean_std(values: list[float] | np.ndarray) -> tuple[float, float, int]:
    """Mean, sample std (ddof = 1; NaN for one seed) and count, ignoring NaN entries."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return float("nan"), float("nan"), 0
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else float("nan")
    return float(arr.mean()), std, int(arr.size)
