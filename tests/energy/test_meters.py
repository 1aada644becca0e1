"""Energy meters: RAPL on a fake sysfs tree, NVML through a fake module, estimates, auto_meter here."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainnet.energy import (
    CombinedMeter,
    CpuEstimateMeter,
    GpuEstimateMeter,
    NvmlMeter,
    Poller,
    RaplMeter,
    auto_meter,
    find_domains,
)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _domain(root: Path, folder: str, name: str, energy: int, max_range: int = 1_000_000) -> Path:
    d = root / folder
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d


def test_rapl_counts_packages_and_handles_wraparound(tmp_path: Path) -> None:
    p0 = _domain(tmp_path, "intel-rapl:0", "package-0", 900_000)
    p1 = _domain(tmp_path, "intel-rapl:1", "package-1", 10)
    _domain(tmp_path, "intel-rapl:0:0", "core", 5)  # sub-domain: part of package-0, not counted
    _domain(tmp_path, "intel-rapl:2", "psys", 5)  # contains the packages: not counted when they exist
    assert [d.name for d in find_domains(tmp_path)] == ["package-0", "package-1"]
    clock = Clock()
    m = RaplMeter(tmp_path, poll_s=None, clock=clock)
    m.start()
    (p0 / "energy_uj").write_text("950000")  # +50,000 uJ
    (p1 / "energy_uj").write_text("20010")  # +20,000 uJ
    clock.t = 2.0
    r = m.sample()
    assert r.joules == pytest.approx(0.07) and r.seconds == 2.0 and r.measured
    assert "package-0+package-1" in r.source
    # package-0 wraps: 950,000 -> 100,000 with range 1,000,000: +(1,000,000 - 950,000) + 100,000 = 150,000 uJ
    (p0 / "energy_uj").write_text("100000")
    clock.t = 4.0
    r = m.stop()
    assert r.joules == pytest.approx(0.07 + 0.15)
    assert r.watts == pytest.approx(0.22 / 4.0)
    assert m.sample() == r  # frozen after stop


def test_rapl_unreadable_or_absent(tmp_path: Path) -> None:
    assert not RaplMeter.available(tmp_path / "nope")
    d = _domain(tmp_path, "intel-rapl:0", "package-0", 1)
    (d / "energy_uj").unlink()  # what a root-only energy_uj looks like to find_domains: unreadable
    assert not RaplMeter.available(tmp_path)
    with pytest.raises(RuntimeError):
        RaplMeter(tmp_path, poll_s=None).start()
    # auto_meter then falls back to the labelled CPU estimate
    m = auto_meter("cpu", rapl_root=tmp_path)
    assert isinstance(m, CpuEstimateMeter)


def test_auto_meter_uses_rapl_when_readable(tmp_path: Path) -> None:
    _domain(tmp_path, "intel-rapl:0", "package-0", 1)
    m = auto_meter("cpu", rapl_root=tmp_path)
    assert isinstance(m, RaplMeter) and m.measured


def test_poller_calls_and_stops() -> None:
    calls: list[int] = []
    p = Poller(lambda: calls.append(1), 0.005)
    p.start()
    deadline = time.monotonic() + 5.0
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    p.stop()
    n = len(calls)
    assert not p._thread.is_alive() and n >= 3

    # a failing sensor ends the loop and is recorded, it does not spin
    def boom() -> None:
        raise OSError("sensor gone")

    q = Poller(boom, 0.001)
    q.start()
    q._thread.join(2.0)
    assert isinstance(q.error, OSError) and not q._thread.is_alive()


def _fake_nvml(energy_mj: list[int] | None, power_mw: list[int]) -> SimpleNamespace:
    def total(_h: object) -> int:
        if energy_mj is None:
            raise RuntimeError("NVMLError_NotSupported")
        return energy_mj[0]

    return SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: ("h", i),
        nvmlDeviceGetName=lambda h: b"Fake GPU",
        nvmlDeviceGetTotalEnergyConsumption=total,
        nvmlDeviceGetPowerUsage=lambda h: power_mw[0],
    )


def test_nvml_energy_counter() -> None:
    energy = [5_000_000]  # mJ
    clock = Clock()
    m = NvmlMeter(0, nvml=_fake_nvml(energy, [0]), clock=clock)
    m.start()
    energy[0] += 123_456  # mJ -> 123.456 J
    clock.t = 1.0
    r = m.stop()
    assert r.joules == pytest.approx(123.456) and r.measured and "total energy counter" in r.source
    assert "Fake GPU" in r.source


def test_nvml_power_sampling_trapezoid() -> None:
    power = [100_000]  # mW = 100 W
    clock = Clock()
    # a long poll interval so only the explicit samples below happen (deterministic)
    m = NvmlMeter(0, poll_s=3600, nvml=_fake_nvml(None, power), clock=clock)
    m.start()  # first sample at t=0, 100 W
    clock.t, power[0] = 10.0, 200_000
    # trapezoid: 10 s x (100 + 200) / 2 W = 1,500 J
    assert m.sample().joules == pytest.approx(1500.0)
    clock.t = 12.0
    r = m.stop()  # + 2 s x 200 W = 400 J
    assert r.joules == pytest.approx(1900.0) and r.measured and "power sampling" in r.source


def test_nvml_unavailable_cases() -> None:
    def fail() -> None:
        raise RuntimeError("NVMLError_LibraryNotFound")

    assert not NvmlMeter.available(0, nvml=SimpleNamespace(nvmlInit=fail))
    assert NvmlMeter.available(0, nvml=_fake_nvml([0], [0]))
    assert not NvmlMeter.available(3, nvml=_fake_nvml([0], [0]))


def test_estimates_are_labelled() -> None:
    cpu = [10.0]
    clock = Clock()
    m = CpuEstimateMeter(watts_per_core=12.0, cpu_seconds=lambda: cpu[0], clock=clock)
    m.start()
    cpu[0], clock.t = 13.5, 5.0  # 3.5 CPU-s x 12 W = 42 J over 5 s
    r = m.stop()
    assert r.joules == pytest.approx(42.0) and r.seconds == 5.0
    assert r.measured is False and r.source.startswith("estimate:")
    g = GpuEstimateMeter(450.0, utilization=0.8, clock=clock)
    g.start()
    clock.t = 15.0  # 450 W x 0.8 x 10 s = 3,600 J
    r = g.stop()
    assert r.joules == pytest.approx(3600.0) and not r.measured and r.source.startswith("estimate:")
    with pytest.raises(ValueError):
        GpuEstimateMeter(450.0, utilization=1.5)
    with pytest.raises(RuntimeError):
        CpuEstimateMeter().sample()


def test_auto_meter_on_this_machine() -> None:
    # measured exactly when this machine exposes readable RAPL (CPU) / NVML (GPU); labelled otherwise
    for device, measurable in (("cpu", RaplMeter.available()), ("cuda", NvmlMeter.available(0))):
        with auto_meter(device) as m:
            sum(i * i for i in range(20_000))
        r = m.stop()
        assert r.measured is measurable
        assert r.joules >= 0 and r.seconds > 0
        assert r.source.startswith("estimate:") is (not measurable)
    if not NvmlMeter.available(0):
        g = auto_meter("cuda", gpu_power_w=123.0)
        assert isinstance(g, GpuEstimateMeter) and "123 W (configured)" in g.source


def test_combined_meter_flags() -> None:
    clock = Clock()
    a = GpuEstimateMeter(100.0, clock=clock)
    b = CpuEstimateMeter(10.0, cpu_seconds=lambda: clock.t / 2, clock=clock)
    c = CombinedMeter([a, b], clock=clock)
    c.start()
    clock.t = 4.0  # 100 W x 4 s + 2 CPU-s x 10 W = 420 J
    r = c.stop()
    assert r.joules == pytest.approx(420.0) and r.measured is False
    assert " + " in r.source
