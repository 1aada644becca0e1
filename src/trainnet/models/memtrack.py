"""Measure the peak bytes of live tensor storage while a function runs (any device, CPU included).

    peak, result = measure_peak(lambda: run_task(model, base, tokens, hp, seed=0), keep=[model, base])

Why not tracemalloc or RSS: torch allocates tensor memory outside Python's allocator (tracemalloc does not
see it) and glibc keeps freed blocks mapped (RSS lags). Instead a TorchDispatchMode records every storage
an operator returns, and a weak reference tells when it is freed; `keep` adds tensors that existed before
(parameters, base copies), counted once. Operator-internal scratch space is not seen, so this is a floor on
what the allocator holds (the CUDA caching allocator and fragmentation come on top).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
import torch.nn as nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

T = TypeVar("T")


class _Tracker(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def add(self, t: torch.Tensor) -> None:
        if t.device.type == "meta":
            return
        s = t.untyped_storage()
        key = s.data_ptr()
        if key in self.live and not self.live[key][0].expired():
            return
        self.live[key] = (StorageWeakRef(s), s.nbytes())

    def sweep(self) -> None:
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            del self.live[k]
        self.current = sum(n for _, n in self.live.values())
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        self.sweep()
        return out


def _tensors(objs: Iterable[Any]) -> Iterable[torch.Tensor]:
    for o in objs:
        if isinstance(o, nn.Module):
            yield from o.parameters()
            yield from o.buffers()
        elif isinstance(o, torch.Tensor):
            yield o
        elif isinstance(o, dict):
            yield from _tensors(o.values())
        elif isinstance(o, list | tuple):
            yield from _tensors(o)


def measure_peak(fn: Callable[[], T], keep: Iterable[Any] = ()) -> tuple[int, T]:
    """(peak live tensor bytes while fn runs, fn's result); `keep`: modules, tensors, dicts alive before."""
    tracker = _Tracker()
    for t in _tensors(keep):
        tracker.add(t)
    tracker.sweep()
    with tracker:
        result = fn()
    tracker.sweep()
    return tracker.peak, result
