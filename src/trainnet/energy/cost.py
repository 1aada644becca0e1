"""Convert joules to kWh, CO2 and money with per-node settings.

    c = EnergyCost(co2_g_per_kwh=350, usd_per_kwh=0.20, usd_per_gpu_hour=0.0, pue=1.0)
    c.kwh(3.6e6) == 1.0;  c.co2_kg(3.6e6) == 0.35;  c.cost_usd(3.6e6, gpu_seconds=3600)
    c.summary(reading)    # dict with kwh, co2_kg, cost_usd, and the reading's measured flag and source

Formulas: kWh = J x PUE / 3.6e6; CO2 kg = kWh x g/kWh / 1000; cost = kWh x $/kWh + GPU-hours x $/GPU-hour.
The derived figures inherit the reading's label: CO2 of a measured reading still uses an assumed grid
intensity, which the summary states.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainnet.energy.base import EnergyReading

J_PER_KWH = 3.6e6


@dataclass(frozen=True)
class EnergyCost:
    """Per-node conversion settings (defaults are assumptions: world-average grid, residential price)."""

    co2_g_per_kwh: float = 480.0  # world average ~480 g/kWh (Ember, Global Electricity Review 2024)
    usd_per_kwh: float = 0.15
    usd_per_gpu_hour: float = 0.0  # 0: the node owns its hardware; set a rental price to charge for it
    pue: float = 1.0  # meters see the device only; >1 adds cooling / power-supply overhead

    def __post_init__(self) -> None:
        if self.co2_g_per_kwh < 0 or self.usd_per_kwh < 0 or self.usd_per_gpu_hour < 0 or self.pue < 1:
            raise ValueError("prices and intensity must be >= 0 and pue >= 1")

    def kwh(self, joules: float) -> float:
        return joules * self.pue / J_PER_KWH

    def co2_kg(self, joules: float) -> float:
        return self.kwh(joules) * self.co2_g_per_kwh / 1000.0

    def energy_usd(self, joules: float) -> float:
        return self.kwh(joules) * self.usd_per_kwh

    def cost_usd(self, joules: float, gpu_seconds: float = 0.0) -> float:
        return self.energy_usd(joules) + gpu_seconds / 3600.0 * self.usd_per_gpu_hour

    def summary(self, reading: EnergyReading, gpus: int = 0) -> dict:
        """kWh, CO2, cost of a reading (gpus x reading.seconds are charged as GPU-time), with labels."""
        return {
            "joules": reading.joules,
            "seconds": reading.seconds,
            "kwh": self.kwh(reading.joules),
            "co2_kg": self.co2_kg(reading.joules),
            "cost_usd": self.cost_usd(reading.joules, gpu_seconds=gpus * reading.seconds),
            "measured": reading.measured,
            "source": reading.source,
            "conversion": (
                f"assumption: {self.co2_g_per_kwh:g} g CO2/kWh, ${self.usd_per_kwh:g}/kWh, "
                f"${self.usd_per_gpu_hour:g}/GPU-hour, PUE {self.pue:g}"
            ),
        }
