"""Labelled energy estimates for hardware that cannot be metered (no RAPL access, no NVML).

    m = CpuEstimateMeter(watts_per_core=10.0)    # process CPU time x W per busy core
    g = GpuEstimateMeter(board_power_w=450.0, utilization=1.0)   # board power x assumed utilization x wall

Readings are `measured=False` and their source starts with "estimate:" and names the assumption.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from trainnet.energy.base import EnergyMeter

# Assumption: a desktop CPU's TDP (65-125 W) over its 8-16 cores is ~8-10 W per busy core.
DEFAULT_WATTS_PER_CORE = 10.0
# Assumption when the GPU kind is unknown: a mid-range consumer board.
DEFAULT_GPU_POWER_W = 300.0


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children. getrusage has microsecond
    resolution; os.times counts 10 ms clock ticks, which reads 0 for a short task."""
    try:
        import resource
    except ImportError:  # not on Windows
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class CpuEstimateMeter(EnergyMeter):
    """Estimate: CPU seconds used by this process x an assumed power per busy core."""

    measured = False

    def __init__(
        self,
        watts_per_core: float = DEFAULT_WATTS_PER_CORE,
        cpu_seconds: Callable[[], float] = process_cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock)
        self.watts_per_core = watts_per_core
        self._cpu_seconds = cpu_seconds
        self._cpu0 = 0.0
        self.source = f"estimate: process CPU time x {watts_per_core:g} W per busy core (assumption)"

    def _start(self) -> None:
        self._cpu0 = self._cpu_seconds()

    def _joules(self) -> float:
        return max(0.0, self._cpu_seconds() - self._cpu0) * self.watts_per_core


class GpuEstimateMeter(EnergyMeter):
    """Estimate: configured board power x assumed utilization x wall seconds (1.0 gives an upper bound)."""

    measured = False

    def __init__(
        self,
        board_power_w: float = DEFAULT_GPU_POWER_W,
        utilization: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        power_source: str = "configured",
    ) -> None:
        super().__init__(clock)
        if not 0 <= utilization <= 1:
            raise ValueError("utilization must be in [0, 1]")
        self.board_power_w = board_power_w
        self.utilization = utilization
        self.source = (
            f"estimate: GPU board power {board_power_w:g} W ({power_source}) x assumed utilization "
            f"{utilization:g} x wall time"
        )

    def _start(self) -> None:
        pass

    def _joules(self) -> float:
        assert self._t0 is not None
        return self.board_power_w * self.utilization * (self._clock() - self._t0)
