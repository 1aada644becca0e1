"""Pure run-planner model: project wall time, utilization, energy, CO2 and cost of a training run.

    s = Scenario()                                # the reference: 7B, 2T tokens, 4,200 RTX 4090s
    p = project(s)                                # consumer swarm projection
    b = project(baseline_scenario(s))             # same model and tokens on an H100 data center
    p.wall_days, p.utilization, p.energy_kwh, p.co2_kg, p.cost_usd
    minimal_value(s, "uplink_mbps", target_days=11)   # smallest uplink that finishes in 11 days

Every number here is a projection (an estimate), never a measurement. The model, per worker and round:

    compute_s  = H * 6 * N * tokens_per_step / (peak_flops * mfu)
    upload_s   = bits_up   * N / (uplink_mbps   * 1e6)
    download_s = (bits_down * N + 8 * H * tokens_per_step * data_bytes_per_token) / (downlink_mbps * 1e6)
                 bits_down: the published deltas a worker skipped, or a checkpoint (dataplane.download_bits)
    worker_round_s = compute_s + upload_s + download_s      (not overlapped, the default)
               = max(compute_s, upload_s + download_s)      (--overlap: comm hidden behind the next round)
    round_s    = worker_round_s * slowdown                  (slowdown >= 1 when the object store, the
                 aggregators, the control plane or the coordinator's link cannot keep up: dataplane.py)
    utilization = compute_s / round_s
    wall_s     = tokens / (gpus * (1 - dropout) * H * tokens_per_step / round_s)
    draw       = utilization + (1 - utilization) * idle_power_fraction
    energy_J   = gpus * power_w * wall_s * draw * pue
    co2_kg     = energy_kWh * g_per_kWh / 1000
    cost_usd   = gpus * wall_h * usd_per_gpu_hour (+ energy_kWh * usd_per_kwh if include_energy_cost)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from trainnet.planner.dataplane import DataPlane, dataplane, download_bits
from trainnet.planner.gpus import gpu_kind

DEFAULT_BITS_PER_PARAM = 2.5  # the default codec q2: 2-bit values + fp16 scale and offset per 64 values
# Mixed-precision AdamW state per parameter: bf16 weights 2 + bf16 grads 2 + fp32 master 4 + Adam m, v 8
# (ZeRO paper, arXiv:1910.02054, "16 Psi"); activations come on top.
TRAIN_BYTES_PER_PARAM = 16.0
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class Scenario:
    """All inputs of one projection; `None` GPU fields mean "take them from the GPU table"."""

    params: float = 7e9
    tokens: float = 2e12  # Llama 2 7B's budget (Touvron et al. 2023, arXiv:2307.09288)
    gpus: int = 4200
    gpu: str = "rtx4090"
    peak_flops: float | None = None
    power_w: float | None = None
    usd_per_gpu_hour: float | None = None
    mfu: float = 0.20  # 7B training state (~112 GB) needs CPU offload on a 24 GB card
    tokens_per_step: float = 32_768  # 16 sequences x 2,048 tokens (with gradient accumulation)
    h: int = 500  # DiLoCo's H (arXiv:2311.08105)
    uplink_mbps: float = 10.0
    downlink_mbps: float = 100.0
    bits_per_param: float = DEFAULT_BITS_PER_PARAM  # upload, per parameter per round
    download_bits_per_param: float | None = None  # None: derived from the published versions (dataplane.py)
    data_bytes_per_token: float = 2.0  # the task's training shard, uint16 token ids (GET /v1/shard)
    dropout: float = 0.3
    overlap: bool = False
    idle_power_fraction: float = 0.25
    pue: float = 1.1
    co2_g_per_kwh: float = 480.0
    usd_per_kwh: float = 0.15
    include_energy_cost: bool = False
    # The data plane (dataplane.py). Engine defaults from src/trainnet/config.py:
    quorum: int = 4
    target_staleness: float = 2.0  # the quorum grows to ceil(active nodes / this) (core/scaling.py)
    max_staleness: int = 8
    lease_s: float = 600.0  # workers heartbeat every lease_s / 2
    publish_bits_per_param: float = 4.5  # publish_codec q4: 4 bits + fp16 scale and offset per 64 values
    full_every: int = 16  # a bf16 checkpoint every this many versions
    full_bits_per_param: float = 16.0
    # Deployment assumptions (labelled in assumptions.py):
    full_fraction: float = 0.05  # rounds that start from a full checkpoint (joiners, long absences)
    store_gbps: float = 10.0  # the object store's link, each direction
    cdn_hit_ratio: float = 0.0  # share of published-version downloads a CDN serves (0: no CDN)
    store_read_latency_ms: float = 1.0  # per range read by an aggregator
    coordinator_gbps: float = 1.0
    control_rps: float = 254.0  # signed requests/s the control plane sustains
    request_bytes: float = 2048.0  # one signed request and its reply, headers included
    manifest_entry_bytes: float = 1024.0  # one blob in a version reply: key, sha256, size, URL
    aggregator_shards: int = 64
    aggregator_cores: int = 1  # per shard
    aggregator_gbps: float = 10.0  # per shard, to the object store
    dataplane: bool = True  # False: workers only (the data-center baseline, "compute alone")

    def resolved(self) -> Scenario:
        """A copy with peak_flops / power_w / usd_per_gpu_hour filled in from the GPU table."""
        kind = gpu_kind(self.gpu)
        return replace(
            self,
            peak_flops=kind.peak_flops if self.peak_flops is None else self.peak_flops,
            power_w=kind.power_w if self.power_w is None else self.power_w,
            usd_per_gpu_hour=kind.usd_per_hour if self.usd_per_gpu_hour is None else self.usd_per_gpu_hour,
        )


@dataclass(frozen=True)
class Projection:
    """The projected run (all values are estimates). Times in seconds unless the name says otherwise."""

    compute_s: float
    upload_s: float
    download_s: float
    round_s: float
    utilization: float
    tokens_per_round: float
    rounds_per_gpu: float
    total_updates: float
    wall_s: float
    wall_days: float
    gpu_hours: float
    energy_kwh: float
    co2_kg: float
    gpu_cost_usd: float
    energy_cost_usd: float
    cost_usd: float
    memory_needed_gb: float
    memory_gb: float | None
    worker_round_s: float  # the round the workers alone would take
    download_bits_per_param: float
    slowdown: float  # round_s / worker_round_s
    bound: str  # the slowest term (dataplane.dataplane)
    dataplane: DataPlane | None

    @property
    def fits_in_memory(self) -> bool | None:
        return None if self.memory_gb is None else self.memory_needed_gb <= self.memory_gb

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fits_in_memory"] = self.fits_in_memory
        return d


def _validate(s: Scenario) -> None:
    if s.params <= 0 or s.tokens <= 0 or s.gpus <= 0 or s.h <= 0 or s.tokens_per_step <= 0:
        raise ValueError("params, tokens, gpus, h and tokens_per_step must be positive")
    if not 0 < s.mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {s.mfu}")
    if not 0 <= s.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {s.dropout}")
    if s.uplink_mbps <= 0 or s.downlink_mbps <= 0:
        raise ValueError("uplink_mbps and downlink_mbps must be positive (math.inf for 'free')")
    bits = (
        s.bits_per_param,
        s.download_bits_per_param or 0.0,
        s.publish_bits_per_param,
        s.full_bits_per_param,
    )
    if min(bits) < 0 or s.data_bytes_per_token < 0:
        raise ValueError("bits per param and data_bytes_per_token must be >= 0")
    if not 0 <= s.idle_power_fraction <= 1 or s.pue < 1:
        raise ValueError("idle_power_fraction must be in [0, 1] and pue >= 1")
    if not 0 <= s.full_fraction <= 1 or not 0 <= s.cdn_hit_ratio < 1:
        raise ValueError("full_fraction must be in [0, 1] and cdn_hit_ratio in [0, 1)")
    if s.quorum < 1 or s.full_every < 1 or s.aggregator_shards < 1 or s.aggregator_cores < 1:
        raise ValueError("quorum, full_every, aggregator_shards and aggregator_cores must be >= 1")
    capacities = (s.store_gbps, s.coordinator_gbps, s.control_rps, s.aggregator_gbps, s.lease_s)
    if min(capacities) <= 0 or s.target_staleness < 0 or s.store_read_latency_ms < 0:
        raise ValueError(
            "link, request-rate and lease capacities must be positive, latency and target_staleness >= 0"
        )


def project(scenario: Scenario) -> Projection:
    """Project one run; see the module docstring for the formulas. Raises ValueError on bad inputs."""
    s = scenario.resolved()
    _validate(s)
    assert s.peak_flops is not None and s.power_w is not None and s.usd_per_gpu_hour is not None
    compute_s = s.h * 6.0 * s.params * s.tokens_per_step / (s.peak_flops * s.mfu)
    upload_s = s.bits_per_param * s.params / (s.uplink_mbps * 1e6)
    down_bits = s.download_bits_per_param if s.download_bits_per_param is not None else download_bits(s)[0]
    data_bits = 8.0 * s.h * s.tokens_per_step * s.data_bytes_per_token
    download_s = (down_bits * s.params + data_bits) / (s.downlink_mbps * 1e6)
    comm_s = upload_s + download_s
    worker_round_s = max(compute_s, comm_s) if s.overlap else compute_s + comm_s
    dp = dataplane(s, compute_s, upload_s, download_s, worker_round_s) if s.dataplane else None
    if dp is not None:
        slowdown, bound = dp.slowdown, dp.bound
    else:  # workers only: the slowest part of their round
        slowdown = 1.0
        bound = max(
            (("worker compute", compute_s), ("worker uplink", upload_s), ("worker downlink", download_s)),
            key=lambda kv: kv[1],
        )[0]
    round_s = worker_round_s * slowdown  # workers wait for the infrastructure
    utilization = compute_s / round_s
    tokens_per_round = s.h * s.tokens_per_step
    effective_gpus = s.gpus * (1.0 - s.dropout)  # dropped rounds are computed, then lost
    wall_s = s.tokens / (effective_gpus * tokens_per_round / round_s)
    gpu_hours = s.gpus * wall_s / 3600.0
    draw = utilization + (1.0 - utilization) * s.idle_power_fraction
    energy_kwh = s.gpus * s.power_w * wall_s * draw * s.pue / 3.6e6
    energy_cost = energy_kwh * s.usd_per_kwh
    gpu_cost = gpu_hours * s.usd_per_gpu_hour
    try:
        memory_gb: float | None = gpu_kind(s.gpu).memory_gb
    except KeyError:
        memory_gb = None
    return Projection(
        compute_s=compute_s,
        upload_s=upload_s,
        download_s=download_s,
        round_s=round_s,
        utilization=utilization,
        tokens_per_round=tokens_per_round,
        rounds_per_gpu=wall_s / round_s,
        total_updates=s.tokens / tokens_per_round,
        wall_s=wall_s,
        wall_days=wall_s / SECONDS_PER_DAY,
        gpu_hours=gpu_hours,
        energy_kwh=energy_kwh,
        co2_kg=energy_kwh * s.co2_g_per_kwh / 1000.0,
        gpu_cost_usd=gpu_cost,
        energy_cost_usd=energy_cost,
        cost_usd=gpu_cost + (energy_cost if s.include_energy_cost else 0.0),
        memory_needed_gb=s.params * TRAIN_BYTES_PER_PARAM / 1e9,
        memory_gb=memory_gb,
        worker_round_s=worker_round_s,
        download_bits_per_param=down_bits,
        slowdown=slowdown,
        bound=bound,
        dataplane=dp,
    )


def baseline_scenario(
    s: Scenario, gpus: int = 512, gpu: str = "h100", mfu: float = 0.40, pue: float = 1.2
) -> Scenario:
    """The same model and tokens on a data center with fast interconnect.

    Synchronous data parallel every step: its communication cost is folded into the MFU (40% is typical
    of well-tuned large runs, e.g. Llama/MegaScale reports 40-55%), so links are free (inf), nothing drops
    out and the GPUs draw full power the whole time. Price per GPU-hour comes from the table (cloud).
    """
    return replace(
        s,
        gpus=gpus,
        gpu=gpu,
        mfu=mfu,
        pue=pue,
        peak_flops=None,
        power_w=None,
        usd_per_gpu_hour=None,
        uplink_mbps=math.inf,
        downlink_mbps=math.inf,
        dropout=0.0,
        overlap=False,
        include_energy_cost=False,
        h=1,
        dataplane=False,
    )


def gpus_to_match(s: Scenario, wall_days: float) -> float:
    """How many GPUs of `s`'s kind (at its MFU, free links) finish `s.tokens` in `wall_days`."""
    r = s.resolved()
    assert r.peak_flops is not None
    return 6.0 * r.params * r.tokens / (r.peak_flops * r.mfu * wall_days * SECONDS_PER_DAY)


def compute_only(s: Scenario) -> Scenario:
    """The same swarm with free links and infrastructure: the wall time compute alone sets."""
    return replace(s, uplink_mbps=math.inf, downlink_mbps=math.inf, dataplane=False)


def tokens_within(s: Scenario, days: float) -> float:
    """How many tokens the scenario's swarm processes in `days` (wall time is linear in tokens)."""
    return s.tokens * days / project(s).wall_days


def minimal_value(
    s: Scenario, field: str, target_days: float, lo: float | None = None, hi: float | None = None
) -> float | None:
    """Smallest value of `field` ("uplink_mbps", "downlink_mbps", "h", "gpus", "store_gbps",
    "aggregator_shards", ...) reaching `target_days`.

    Wall time falls monotonically as each of these grows, so this bisects (geometrically; integers for
    "h", "gpus" and "aggregator_shards"). Returns None when even `hi` misses the target (e.g. compute
    alone is too slow).
    """
    if field not in {f.name for f in fields(Scenario)}:
        raise ValueError(f"unknown scenario field {field!r}")
    integer = field in ("h", "gpus", "aggregator_shards")
    lo = lo if lo is not None else (1.0 if integer else 1e-3)
    hi = hi if hi is not None else (1e6 if integer else 1e5)

    def ok(v: float) -> bool:
        value = int(math.ceil(v)) if integer else v
        return project(replace(s, **{field: value})).wall_days <= target_days

    if not ok(hi):
        return None
    if ok(lo):
        return int(lo) if integer else lo
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
        if (integer and math.ceil(hi) - math.ceil(lo) <= 1) or (not integer and hi / lo < 1 + 1e-6):
            break
    if integer:
        return int(math.ceil(hi)) if ok(math.ceil(hi)) else int(math.ceil(hi)) + 1
    return hi


def sweep(
    s: Scenario, target_days: float, h_values: tuple[int, ...] = (30, 100, 250, 500, 1000, 2000)
) -> list[dict]:
    """For each H: the minimal uplink (Mbit/s) that reaches `target_days`, and the resulting projection.

    Used for the worked example in docs/PLANNER.md. `min_uplink_mbps` is None where no uplink is enough.
    """
    rows = []
    for h in h_values:
        sh = replace(s, h=h)
        up = minimal_value(sh, "uplink_mbps", target_days)
        p = project(replace(sh, uplink_mbps=up)) if up is not None else None
        rows.append(
            {
                "h": h,
                "min_uplink_mbps": up,
                "wall_days": p.wall_days if p else None,
                "utilization": p.utilization if p else None,
                "compute_only_days": project(compute_only(sh)).wall_days,
            }
        )
    return rows


def default_bits_per_param(path: str | Path | None = None) -> tuple[float, str]:
    """(bits per parameter per upload, source) for the default codec.

    Reads the measured codec table bench/results/codecs.md when it exists: the first markdown-table row
    that mentions "default" and has a numeric value in a column whose header contains "bits" and "param".
    Otherwise returns 2.5 bits/param, the size of the default codec q2 by construction (2-bit values plus an
    fp16 scale and offset per 64-value block), labelled as such.
    """
    candidates = (
        [Path(path)]
        if path
        else [
            Path("bench/results/codecs.md"),
            Path(__file__).resolve().parents[3] / "bench" / "results" / "codecs.md",
        ]
    )
    for p in candidates:
        if not p.is_file():
            continue
        value = _parse_codec_table(p.read_text(encoding="utf-8", errors="replace"))
        if value is not None:
            return value, f"measured: {p} (default codec row)"
        return DEFAULT_BITS_PER_PARAM, f"assumption: {p} found but no 'default' row with bits/param parsed"
    return DEFAULT_BITS_PER_PARAM, (
        "default codec q2 by construction: 2 bits + 32 bits per 64-value block = 2.5 bits/param "
        "(bench/results/codecs.md not found)"
    )


def _parse_codec_table(text: str) -> float | None:
    col: int | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            col = None if not line else col
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        lowered = [c.lower() for c in cells]
        header = [i for i, c in enumerate(lowered) if "bits" in c and "param" in c]
        if header and not any("default" in c for c in lowered):
            col = header[0]
            continue
        if col is not None and col < len(cells) and any("default" in c for c in lowered):
            try:
                return float(cells[col].replace("*", "").replace(",", "").split()[0])
            except (ValueError, IndexError):
                continue
    return None
