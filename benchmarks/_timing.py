"""Timing variants of one step in turn, shared by fast_paths.py and adapter_forms.py.

A shared machine drifts within seconds, so the variants are timed round after round in one
process and compared by their medians; each round warms a variant up before timing it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_in_turn(
    steps: dict[str, Callable[[], None]], rounds: int, per_round: int, warmup: int
) -> dict[str, list[float]]:
    """Milliseconds per step of each variant, one figure per round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(warmup):
                step()
            t0 = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - t0) / per_round * 1000)
    return times


def print_ratio_table(times: dict[str, list[float]], label: str, versus: str, digits: int) -> None:
    """A markdown table: each variant's median, its ratio to the first variant's, its rounds."""
    print(f"| {label} | median ms/step | vs {versus} | per round |\n|---|---|---|---|")
    base = statistics.median(next(iter(times.values())))
    for name, values in times.items():
        med = statistics.median(values)
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {med:.1f} | {med / base:.{digits}f} | {rounds} |")
