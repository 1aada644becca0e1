"""Measured CPU energy from Linux RAPL counters (/sys/class/powercap/intel-rapl*/energy_uj).

    if RaplMeter.available():
        with RaplMeter() as m: ...
        print(m.stop())        # EnergyReading(..., source="RAPL package-0+package-1", measured=True)

Counts the top-level package domains (package-N) only: sub-domains (core, uncore, dram) are parts of
a package and psys already contains the packages, so summing them would double count (psys is used
only when there is no package domain). Counters wrap at max_energy_range_uj; a wrap is detected when
a reading goes down, so the meter polls every `poll_s` (default 10 s, far below the ~minutes a counter
takes to wrap at a few hundred watts). Since Linux 5.10 energy_uj is usually readable by root only;
`available()` reports False then and auto_meter falls back to an estimate.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainnet.energy.base import EnergyMeter, Poller

DEFAULT_ROOT = Path("/sys/class/powercap")
_TOP_LEVEL = re.compile(r"^intel-rapl:\d+$")


@dataclass
class RaplDomain:
    """One RAPL counter: its sysfs folder, name, wrap range (uJ) and accumulation state."""

    path: Path
    name: str
    max_range_uj: int
    last_uj: int = 0
    total_uj: int = 0

    def read_uj(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())

    def update(self) -> None:
        cur = self.read_uj()
        if cur >= self.last_uj:
            self.total_uj += cur - self.last_uj
        else:  # wrapped past max_energy_range_uj back to 0
            self.total_uj += self.max_range_uj - self.last_uj + cur
        self.last_uj = cur


def find_domains(root: str | Path = DEFAULT_ROOT) -> list[RaplDomain]:
    """Readable top-level RAPL domains under `root` (packages, else psys); [] when none can be read."""
    root = Path(root)
    found: list[RaplDomain] = []
    try:
        entries = sorted(p for p in root.iterdir() if _TOP_LEVEL.match(p.name))
    except OSError:
        return []
    for p in entries:
        try:
            name = (p / "name").read_text().strip() if (p / "name").exists() else p.name
            max_range = int((p / "max_energy_range_uj").read_text().strip())
            dom = RaplDomain(p, name, max_range)
            dom.last_uj = dom.read_uj()  # also proves energy_uj is readable (often root-only)
        except (OSError, ValueError):
            continue
        found.append(dom)
    packages = [d for d in found if d.name.startswith("package")]
    return packages or found


class RaplMeter(EnergyMeter):
    """Measured CPU-package energy from RAPL; see the module docstring."""

    measured = True

    def __init__(
        self,
        root: str | Path = DEFAULT_ROOT,
        poll_s: float | None = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock)
        self.root = Path(root)
        self.poll_s = poll_s
        self._domains: list[RaplDomain] = []
        self._lock = threading.Lock()
        self._poller: Poller | None = None
        self.source = f"RAPL {self.root}"

    @staticmethod
    def available(root: str | Path = DEFAULT_ROOT) -> bool:
        return bool(find_domains(root))

    def _start(self) -> None:
        self._domains = find_domains(self.root)
        if not self._domains:
            raise RuntimeError(f"no readable RAPL domain under {self.root}")
        self.source = "RAPL " + "+".join(d.name for d in self._domains) + f" ({self.root})"
        if self.poll_s:
            self._poller = Poller(self._update, self.poll_s)
            self._poller.start()

    def _update(self) -> None:
        with self._lock:
            for d in self._domains:
                d.update()

    def _joules(self) -> float:
        self._update()
        with self._lock:
            return sum(d.total_uj for d in self._domains) / 1e6

    def _stop(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
