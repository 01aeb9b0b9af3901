"""cl-bench: a continual-learning benchmark harness for CLIP-style vision-language models.

The names a learner needs; the plug-in API lives in `cl_bench.api`.
"""

from cl_bench.api.learner import Batch, LabelSpace, Learner, StepInfo, Task, TrainingSet
from cl_bench.api.optim import OptimizerConfig
from cl_bench.api.registry import register_learner

__version__ = "0.1.0"
__all__ = [
    "Batch",
    "LabelSpace",
    "Learner",
    "OptimizerConfig",
    "StepInfo",
    "Task",
    "TrainingSet",
    "__version__",
    "register_learner",
]
