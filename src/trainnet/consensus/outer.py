"""The outer optimizer: SGD with (Nesterov) momentum on the aggregated pseudo-gradient (DiLoCo).

    outer = OuterOptimizer(lr=0.7, momentum=0.9, nesterov=True)
    new_flat = outer.step(params_flat, delta_flat)

State is one momentum vector, saved and restored with the coordinator's state so a restart
continues exactly where it stopped.
"""

from __future__ import annotations

import torch


class OuterOptimizer:
    def __init__(self, lr: float, momentum: float = 0.9, nesterov: bool = True) -> None:
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.buf: torch.Tensor | None = None

    def step(self, params: torch.Tensor, delta: torch.Tensor, lr: float | None = None) -> torch.Tensor:
        """Return params - lr * direction, direction = Nesterov(delta). Same rule as torch.optim.SGD."""
        lr = self.lr if lr is None else lr
        if self.momentum == 0:
            return params - lr * delta
        if self.buf is None:
            self.buf = delta.clone()
        else:
            self.buf.mul_(self.momentum).add_(delta)
        direction = delta + self.momentum * self.buf if self.nesterov else self.buf
        return params - lr * direction

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.buf is None else {"momentum": self.buf.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.buf = state["momentum"].clone() if "momentum" in state else None
