"""Pick the best energy meter for a device, and sum several meters.

    meter = auto_meter("auto")          # "cpu", "cuda", "cuda:1", "auto" (CUDA when torch sees one)
    meter = CombinedMeter([auto_meter("cuda:0"), auto_meter("cpu")])   # GPU board + CPU package

Order of preference: NVML (GPU, measured) or RAPL (CPU, measured); otherwise a labelled estimate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from trainnet.energy.base import EnergyMeter, EnergyReading
from trainnet.energy.estimate import (
    DEFAULT_GPU_POWER_W,
    DEFAULT_WATTS_PER_CORE,
    CpuEstimateMeter,
    GpuEstimateMeter,
)
from trainnet.energy.nvml import NvmlMeter
from trainnet.energy.rapl import DEFAULT_ROOT, RaplMeter


def _resolve(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _gpu_board_power(index: int) -> tuple[float, str]:
    """Board power of CUDA device `index` from the planner's GPU table, else a default (assumption)."""
    try:
        import torch

        from trainnet.planner.gpus import gpu_kind

        name = torch.cuda.get_device_name(index)
        kind = gpu_kind(name)
        return kind.power_w, f"{kind.name}, vendor spec"
    except Exception:  # no torch/CUDA or an unknown board
        return DEFAULT_GPU_POWER_W, "unknown board, assumption"


def auto_meter(
    device: str = "auto",
    *,
    gpu_power_w: float | None = None,
    gpu_utilization: float = 1.0,
    watts_per_core: float = DEFAULT_WATTS_PER_CORE,
    rapl_root: str | Path = DEFAULT_ROOT,
    nvml_poll_s: float = 0.1,
) -> EnergyMeter:
    """The best meter for `device` (not started). GPU meters see the board only, CPU meters the package."""
    dev = _resolve(device)
    if dev.startswith("cuda"):
        index = int(dev.split(":", 1)[1]) if ":" in dev else 0
        if NvmlMeter.available(index):
            return NvmlMeter(index, poll_s=nvml_poll_s)
        if gpu_power_w is not None:
            return GpuEstimateMeter(gpu_power_w, gpu_utilization, power_source="configured")
        power, src = _gpu_board_power(index)
        return GpuEstimateMeter(power, gpu_utilization, power_source=src)
    if dev == "cpu" and RaplMeter.available(rapl_root):
        return RaplMeter(rapl_root)
    # CPU without RAPL access, or another backend (mps, ...): CPU-time estimate, labelled as such.
    return CpuEstimateMeter(watts_per_core)


class CombinedMeter(EnergyMeter):
    """Sum of several meters; measured only if every part is, sources joined with ' + '."""

    def __init__(self, meters: Sequence[EnergyMeter], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        if not meters:
            raise ValueError("need at least one meter")
        self.meters = list(meters)
        self.measured = all(m.measured for m in self.meters)
        self.source = " + ".join(m.source for m in self.meters)

    def _start(self) -> None:
        for m in self.meters:
            m.start()
        self.source = " + ".join(m.source for m in self.meters)  # parts refine their source on start

    def _joules(self) -> float:
        return sum(m.sample().joules for m in self.meters)

    def _stop(self) -> None:
        for m in self.meters:
            m.stop()

    def parts(self) -> list[EnergyReading]:
        """The latest reading of each part."""
        return [m.sample() for m in self.meters]
