"""cl-bench: a continual-learning benchmark harness for CLIP-style vision-language models."""

from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.api.registry import register_learner

__version__ = "0.1.0"
__all__ = ["Batch", "Learner", "StepInfo", "Task", "register_learner", "__version__"]
