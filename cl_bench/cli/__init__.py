"""The `clbench` command line (typer); `python -m cl_bench.cli` is the same program."""

from cl_bench.cli.app import app, main

__all__ = ["app", "main"]
