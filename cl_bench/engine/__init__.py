"""One run: the task-stream loop and its parts (run directory, trainer, evaluator,
recorder, checkpoints), the run config and the settings it resolves."""
