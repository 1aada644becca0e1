"""The coordinator: a sans-IO core (`core.py`) and the shells that drive it."""

from trainnet.coordinator.core import Coordinator, CoordinatorConfig

__all__ = ["Coordinator", "CoordinatorConfig"]
