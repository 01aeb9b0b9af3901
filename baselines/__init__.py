"""Baseline learners, written exactly as a third-party plug-in would be and registered
through the `cl_bench.learners` entry-point group in pyproject.toml."""
