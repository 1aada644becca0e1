"""EnergyCost conversions on hand-computed values."""

from __future__ import annotations

import pytest

from trainnet.energy import EnergyCost, EnergyReading


def test_conversions() -> None:
    c = EnergyCost(co2_g_per_kwh=400.0, usd_per_kwh=0.2, usd_per_gpu_hour=0.5, pue=1.25)
    # 7.2e6 J x PUE 1.25 / 3.6e6 J/kWh = 2.5 kWh
    assert c.kwh(7.2e6) == pytest.approx(2.5)
    # 2.5 kWh x 400 g/kWh = 1,000 g = 1.0 kg
    assert c.co2_kg(7.2e6) == pytest.approx(1.0)
    # energy 2.5 x $0.2 = $0.5; GPU time 7,200 s = 2 h x $0.5 = $1.0; total $1.5
    assert c.energy_usd(7.2e6) == pytest.approx(0.5)
    assert c.cost_usd(7.2e6, gpu_seconds=7200) == pytest.approx(1.5)


def test_summary_keeps_labels() -> None:
    r = EnergyReading(joules=3.6e6, seconds=3600.0, source="estimate: x", measured=False)
    s = EnergyCost(co2_g_per_kwh=100.0, usd_per_kwh=0.1, usd_per_gpu_hour=2.0).summary(r, gpus=2)
    # 1 kWh -> 0.1 kg CO2; cost 1 x $0.1 + 2 GPUs x 1 h x $2 = $4.1
    assert s["kwh"] == pytest.approx(1.0) and s["co2_kg"] == pytest.approx(0.1)
    assert s["cost_usd"] == pytest.approx(4.1)
    assert s["measured"] is False and s["source"] == "estimate: x" and "assumption" in s["conversion"]
    assert r.watts == pytest.approx(1000.0) and r.kwh == pytest.approx(1.0)


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        EnergyCost(pue=0.9)
    with pytest.raises(ValueError):
        EnergyCost(usd_per_kwh=-1)
