"""Run planner: project a full-size run (wall time, utilization, energy, CO2, cost) before renting GPUs.

    from trainnet.planner import Scenario, project, baseline_scenario, sweep
    p = project(Scenario(uplink_mbps=20, h=1000))
    print(p.wall_days, p.bound, project(baseline_scenario(Scenario())).wall_days)
    p.dataplane.resources          # object store, aggregation, control plane: load, capacity, headroom

CLI: `trainnet estimate --help`. Every figure is a projection (estimate), never a measurement.
"""

# dataplane.dataplane() is not re-exported: the name would shadow the submodule trainnet.planner.dataplane.
from trainnet.planner.dataplane import (
    DataPlane,
    Resource,
    download_bits,
    quorum,
    versions_per_round,
)
from trainnet.planner.estimate import (
    Projection,
    Scenario,
    baseline_scenario,
    compute_only,
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
    "DataPlane",
    "GpuKind",
    "Projection",
    "Resource",
    "Scenario",
    "baseline_scenario",
    "compute_only",
    "download_bits",
    "default_bits_per_param",
    "gpu_kind",
    "gpus_to_match",
    "minimal_value",
    "project",
    "quorum",
    "sweep",
    "tokens_within",
    "versions_per_round",
]
