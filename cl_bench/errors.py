"""Errors meant for users: a line that names the problem and the fix (CLI exit code 2).

When several things are wrong at once (every missing dataset of a stream, say), the error
carries them as `items`: its text is a first line naming the problem and the count, then
one indented line per item with its own fix, instead of one line thousands of characters
long. `str(error)` is that text, so the CLI and the Python API show the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """Bad input or a missing resource; the CLI prints the message and exits with code 2.

    `UserError(message)` is one line. `UserError(message, items=[...])` with two or more
    items reads ``message (N problems):`` and then one ``  - item`` line each; a single
    item stays on one line, ``message: item``.
    """

    def __init__(self, message: str = "", items: Iterable[str] = ()) -> None:
        self.message = str(message)
        self.items: tuple[str, ...] = tuple(str(i) for i in items)
        super().__init__(self.text())

    def text(self) -> str:
        if not self.items:
            return self.message
        if len(self.items) == 1:
            return f"{self.message}: {self.items[0]}"
        lines = [f"{self.message} ({len(self.items)} problems):"]
        lines += [f"  - {item}" for item in self.items]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


class RunFailed(Exception):
    """A run stopped (e.g. a non-finite loss); completed tasks' results are kept."""
