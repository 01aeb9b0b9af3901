"""cl-bench: a continual-learning benchmark harness for CLIP-style vision-language models.

The names a learner needs; the plug-in API lives in `cl_bench.api`. The notebook API
(`run`, `load_runs`, `leaderboard`, `Run`: cl_bench.workflow, the top layer) is imported on
first access, so `import cl_bench` stays light (no torch).
"""

import importlib
from typing import Any

from cl_bench.api.learner import Batch, LabelSpace, Learner, StepInfo, Task, TrainingSet
from cl_bench.api.optim import OptimizerConfig
from cl_bench.api.registry import register_learner

__version__ = "0.1.0"
_WORKFLOW_NAMES = ("Run", "leaderboard", "load_runs", "run")
__all__ = [
    "Batch",
    "LabelSpace",
    "Learner",
    "OptimizerConfig",
    "Run",
    "StepInfo",
    "Task",
    "TrainingSet",
    "__version__",
    "leaderboard",
    "load_runs",
    "register_learner",
    "run",
]


def __getattr__(name: str) -> Any:
    """The notebook API, imported on first use. By name, not by an import statement: the
    workflow module is the top layer and this package's __init__ the api layer."""
    if name in _WORKFLOW_NAMES:
        return getattr(importlib.import_module("cl_bench.workflow"), name)
    raise AttributeError(f"module 'cl_bench' has no attribute {name!r}")
