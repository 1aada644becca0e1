"""Optional experiment trackers, off by default: TensorBoard and Weights & Biases.

    trainnet coordinator --run run.toml --state state/ --tracker tensorboard   # event files in state/tensorboard/
    trainnet coordinator --run run.toml --state state/ --tracker wandb         # offline run in state/wandb/

Each is an extra (`pip install 'trainnet[tensorboard]'` / `'trainnet[wandb]'`). Weights & Biases runs in
offline mode unless the user sets WANDB_MODE=online themselves: nothing leaves the machine by default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise RuntimeError("--tracker tensorboard needs the tensorboard package: "
                               "pip install 'trainnet[tensorboard]'") from exc
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, log_dir: Path, run_name: str) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise RuntimeError("--tracker wandb needs the wandb package: pip install 'trainnet[wandb]'") from exc
        log_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project="trainnet", name=run_name, dir=str(log_dir),
                              mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def make_tracker(kind: str | None, state_dir: Path, run_name: str = "run") -> Tracker:
    """A tracker by name ("", "none", "tensorboard", "wandb"); a clear error for anything else."""
    if not kind or kind == "none":
        return NullTracker()
    if kind == "tensorboard":
        return TensorBoardTracker(state_dir / "tensorboard")
    if kind == "wandb":
        return WandbTracker(state_dir / "wandb", run_name)
    raise ValueError(f"unknown tracker {kind!r} (choose none, tensorboard or wandb)")
