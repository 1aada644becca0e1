"""Run planner: project a full-size run (wall time, utilization, energy, CO2, cost) before renting GPUs.

    from trainnet.planner import Scenario, project, baseline_scenario, sweep
    p = project(Scenario(uplink_mbps=20, h=1000))
    print(p.wall_days, project(baseline_scenario(Scenario())).wall_days)

CLI: `trainnet estimate --help`. Every figure is a projection (estimate), never a measurement.
"""

from trainnet.planner.estimate import (
    Projection,
    Scenario,
    baseline_scenario,
    default_bits_per_param,
    gpus_to_match,
    minimal_value,
    project,
    sweep,
    tokens_within,
)
from trainnet.planner.gpus import GPU_KINDS, GpuKind, gpu_kind

__all__ = [
    "GPU_KINDS",
    "GpuKind",
    "Projection",
    "Scenario",
    "baseline_scenario",
    "default_bits_per_param",
    "gpu_kind",
    "gpus_to_match",
    "minimal_value",
    "project",
    "sweep",
    "tokens_within",
]
