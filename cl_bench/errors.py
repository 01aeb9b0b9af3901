"""Errors meant for users: one line that names the problem and the fix (CLI exit code 2)."""


class UserError(Exception):
    """Bad input or a missing resource; the CLI prints the message and exits with code 2."""


class RunFailed(Exception):
    """A run stopped (e.g. a non-finite loss); completed tasks' results are kept."""
