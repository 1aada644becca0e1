"""Schedules as functions of run progress (share of the token budget already handed out).

Both the asynchronous run and the synchronous baseline use the same functions, so they are
compared at equal tokens with equal learning-rate schedules.
"""

from __future__ import annotations

import math


def lr_at(progress: float, lr: float, warmup: float, min_ratio: float) -> float:
    """Linear warm-up over `warmup` of the budget, then cosine decay to lr * min_ratio."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return lr * (p / warmup + 1e-3)
    span = max(1.0 - warmup, 1e-9)
    cos = 0.5 * (1 + math.cos(math.pi * (p - warmup) / span))
    return lr * (min_ratio + (1 - min_ratio) * cos)


def h_at(progress: float, h: int, h_start: int | None, ramp: float) -> int:
    """Inner steps per task: ramp linearly from h_start to h over the first `ramp` of the budget."""
    if h_start is None or ramp <= 0 or progress >= ramp:
        return h
    p = max(progress, 0.0) / ramp
    return max(1, round(h_start + (h - h_start) * p))
