"""Where a run reports progress: the CLI draws rich bars, tests and workers pass nothing."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """Progress sink (the CLI draws rich bars; tests pass nothing)."""

    def phase(self, label: str, total: int) -> None: ...
    def advance(self, n: int = 1, scalars: dict[str, float] | None = None) -> None: ...
    def message(self, text: str) -> None: ...


class NullReporter:
    def phase(self, label: str, total: int) -> None:
        pass

    def advance(self, n: int = 1, scalars: dict[str, float] | None = None) -> None:
        pass

    def message(self, text: str) -> None:
        pass
