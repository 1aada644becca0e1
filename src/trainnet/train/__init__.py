"""Local training: the one function that runs a task (worker, simulator and verifier share it)."""

from trainnet.train.local import TaskHParams, TaskResult, evaluate, flatten, run_task, sample_batch, unflatten

__all__ = ["TaskHParams", "TaskResult", "evaluate", "flatten", "run_task", "sample_batch", "unflatten"]
