"""Measured NVIDIA GPU energy through NVML (the optional `nvidia-ml-py` package, module `pynvml`).

    if NvmlMeter.available(0):
        with NvmlMeter(0) as m: ...
        m.stop()   # EnergyReading(..., source="NVML total energy counter, GPU 0 (...)", measured=True)

Prefers the board's total-energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ, Volta and newer);
where that is not supported it samples nvmlDeviceGetPowerUsage (mW) every `poll_s` on a background
thread and integrates with the trapezoid rule (still measured, but at the sensor's sampling accuracy).
pynvml is imported lazily, so nothing here needs it unless a GPU meter is actually built.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from trainnet.energy.base import EnergyMeter, Poller


def load_nvml() -> ModuleType | None:
    """The pynvml module, or None when nvidia-ml-py is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class NvmlMeter(EnergyMeter):
    """Measured GPU board energy for one device index; `nvml` may be injected (tests, other bindings)."""

    measured = True

    def __init__(
        self,
        index: int = 0,
        poll_s: float = 0.1,
        nvml: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock)
        self.index = index
        self.poll_s = poll_s
        self._nvml = nvml
        self._handle: Any = None
        self._mode = ""
        self._start_mj = 0
        self._lock = threading.Lock()
        self._joules_acc = 0.0
        self._last: tuple[float, float] | None = None  # (time, watts) of the last power sample
        self._poller: Poller | None = None
        self.source = f"NVML GPU {index}"

    @staticmethod
    def available(index: int = 0, nvml: Any | None = None) -> bool:
        """True when NVML loads and device `index` exists (no driver / no package / no GPU: False)."""
        nvml = nvml or load_nvml()
        if nvml is None:
            return False
        try:
            nvml.nvmlInit()
        except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return False
        try:
            return index < nvml.nvmlDeviceGetCount()
        except Exception:
            return False
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass

    def _start(self) -> None:
        nvml = self._nvml or load_nvml()
        if nvml is None:
            raise RuntimeError("nvidia-ml-py (pynvml) is not installed")
        self._nvml = nvml
        nvml.nvmlInit()
        self._handle = nvml.nvmlDeviceGetHandleByIndex(self.index)
        name = nvml.nvmlDeviceGetName(self._handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        try:
            self._start_mj = int(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
            self._mode = "counter"
            self.source = f"NVML total energy counter, GPU {self.index} ({name})"
        except Exception:  # NVMLError_NotSupported on pre-Volta boards
            self._mode = "power"
            self.source = f"NVML power sampling every {self.poll_s:g} s, GPU {self.index} ({name})"
            self._sample_power()
            self._poller = Poller(self._sample_power, self.poll_s)
            self._poller.start()

    def _sample_power(self) -> None:
        watts = float(self._nvml.nvmlDeviceGetPowerUsage(self._handle)) / 1000.0
        now = self._clock()
        with self._lock:
            if self._last is not None:
                t0, w0 = self._last
                self._joules_acc += (now - t0) * (w0 + watts) / 2.0
            self._last = (now, watts)

    def _joules(self) -> float:
        if self._mode == "counter":
            return (
                int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) - self._start_mj
            ) / 1000.0
        self._sample_power()
        with self._lock:
            return self._joules_acc

    def _stop(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass
