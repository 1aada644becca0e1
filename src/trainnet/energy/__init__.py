"""Energy metering for workers: measured where the hardware allows (NVML, RAPL), else a labelled estimate.

    from trainnet.energy import auto_meter, EnergyCost
    meter = auto_meter("auto"); meter.start()
    ...run a task...
    r = meter.stop()                          # EnergyReading(joules, seconds, source, measured)
    EnergyCost(co2_g_per_kwh=300).summary(r)  # kWh, CO2, cost, with the measured flag and source

See docs/ENERGY.md for what is measured vs estimated, on which hardware, and the formulas.
"""

from trainnet.energy.auto import CombinedMeter, auto_meter
from trainnet.energy.base import EnergyMeter, EnergyReading, Poller
from trainnet.energy.cost import EnergyCost
from trainnet.energy.estimate import CpuEstimateMeter, GpuEstimateMeter, process_cpu_seconds
from trainnet.energy.nvml import NvmlMeter
from trainnet.energy.rapl import RaplDomain, RaplMeter, find_domains

__all__ = [
    "CombinedMeter",
    "CpuEstimateMeter",
    "EnergyCost",
    "EnergyMeter",
    "EnergyReading",
    "GpuEstimateMeter",
    "NvmlMeter",
    "Poller",
    "RaplDomain",
    "RaplMeter",
    "auto_meter",
    "find_domains",
    "process_cpu_seconds",
]
