"""The energy-meter interface every worker uses, and a bounded background poller.

    meter = auto_meter("cpu")          # or RaplMeter(), NvmlMeter(0), CpuEstimateMeter(), ...
    meter.start()
    ...train...
    r = meter.stop()                   # EnergyReading(joules, seconds, source, measured)
    print(r.joules, "measured" if r.measured else "estimate", r.source)

A reading is cumulative since start(). `measured=False` readings always carry a source that starts
with "estimate:", so nothing downstream can print an estimate as if it were a measurement.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class EnergyReading:
    """Energy used since the meter started: joules over seconds, where it came from, measured or not."""

    joules: float
    seconds: float
    source: str
    measured: bool

    @property
    def watts(self) -> float:
        """Average power over the reading (0 for a zero-length reading)."""
        return self.joules / self.seconds if self.seconds > 0 else 0.0

    @property
    def kwh(self) -> float:
        return self.joules / 3.6e6


class EnergyMeter(ABC):
    """start() once, sample() any number of times (cumulative), stop() once; usable as a context manager."""

    source: str = ""
    measured: bool = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t0: float | None = None
        self._final: EnergyReading | None = None

    def start(self) -> None:
        self._t0 = self._clock()
        self._final = None
        self._start()

    def sample(self) -> EnergyReading:
        if self._final is not None:
            return self._final
        if self._t0 is None:
            raise RuntimeError("call start() before sample()")
        return EnergyReading(self._joules(), self._clock() - self._t0, self.source, self.measured)

    def stop(self) -> EnergyReading:
        if self._final is None:
            reading = self.sample()
            self._stop()
            self._final = reading
        return self._final

    def __enter__(self) -> EnergyMeter:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def _joules(self) -> float: ...

    def _stop(self) -> None:  # noqa: B027 - optional hook
        pass


class Poller:
    """Calls `fn` every `interval_s` on a daemon thread until stop(); the loop ends when the event is set.

    Used to integrate sampled power and to read wrapping counters often enough. `fn` exceptions end the
    loop (recorded in `error`) instead of spinning.
    """

    def __init__(self, fn: Callable[[], None], interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._fn = fn
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainnet-energy-poller", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._fn()
            except Exception as exc:  # a broken sensor must not kill training; the reading stays partial
                self.error = exc
                return

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
