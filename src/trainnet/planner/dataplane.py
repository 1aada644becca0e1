"""The run's infrastructure in the planner: object store, control plane, aggregators, staleness, downloads.

    q = quorum(s); v = versions_per_round(s)          # merge size and expected staleness (core/scaling.py)
    bits, parts = download_bits(s)                    # bits/param a worker downloads per round
    dp = dataplane(s, compute_s, upload_s, download_s, round_s)   # estimate.project calls this
    dp.bound, dp.slowdown, [(r.name, r.utilization) for r in dp.resources]

Every number is a projection. Per delivered update (G gpus, dropout d, N params, one round = one task; a
lost round still downloads and talks to the control plane, hence the factor r = 1 / (1 - d)):

    quorum q       = max(quorum, ceil(G / target_staleness))           the active nodes are the G workers
    staleness v    = G (1 - d) / q                                    versions published during one round
    download bits  = (1 - f) min(v b_pub, b_catch) + f b_catch,  b_catch = b_full + (full_every - 1) / 2 b_pub
    store in       = update + state writes / q
    store out      = r x model download x (1 - cdn_hit) + 2 x update (stats + apply) + state reads / q
    aggregation    t_u = [N (b_stats + b_apply) / cores + 2 x update / agg_link + reads x latency] / shards
                   T_0 = state bytes / agg_link / shards   (per merge; its CPU part measures ~0)
                   capacity: merges of quorum size keep up, q / (T_0 + q t_u) updates/s
    control plane  r x (lease + shard + commit + version GETs + heartbeats every lease_s / 2) requests
    coordinator    r x (requests x request_bytes + manifests + the task's training data)

Each resource allows at most some updates/s; the swarm runs at min(worker rate, every infrastructure limit)
and `bound` names the slowest term (see `dataplane`). The aggregation constants are measured
(bench/results/aggregate.md, one thread of a shared 2-core CPU); everything else is an input with a source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainnet.core.scaling import effective_quorum

if TYPE_CHECKING:
    from trainnet.planner.estimate import Scenario

AGG_SOURCE = "measured on a 2-core CPU (CPU time of 1 torch thread), bench/results/aggregate.md"
# CPU ns per parameter per update of the default rule (robust) at the largest merge measured (AGG_MERGE, as
# many updates as a 4,200-node quorum); tests/planner/test_dataplane.py checks them against the table. The
# per-merge CPU cost (outer step, publication) fits to ~0 next to this (negative intercepts in the table's
# fits), so the fixed part of a merge is its state I/O only.
AGG_STATS_NS_PER_PARAM_UPDATE = 47.62
AGG_APPLY_NS_PER_PARAM_UPDATE = 245.48
AGG_MERGE = "1.0M x 2048"
HASH_BLOCK = 1 << 20  # bytes per verified read of an update part (protocol/wire.py); one range read each
CHUNK_PARAMS = 1 << 20  # parameters per full-checkpoint chunk (aggregate.block): one manifest entry each
TENSOR_PARAMS = 1 << 24  # assumption: ~16.8M parameters per tensor (a 4096 x 4096 matrix) for the read count
WORKER_TERMS = ("worker compute", "worker uplink", "worker downlink")


@dataclass(frozen=True)
class Resource:
    """One term: the updates/s it alone allows (`max_rate`), and its load at the projected rate."""

    name: str
    max_rate: float  # delivered updates per second this resource sustains on its own
    demand: float  # at the projected rate, in `unit`
    capacity: float  # in `unit` (for worker terms: seconds per round)
    unit: str
    utilization: float  # demand / capacity at the projected rate
    needed: float  # capacity this resource needs to keep up with the workers alone (worker terms: demand)


@dataclass(frozen=True)
class DataPlane:
    """Infrastructure terms of a projection (all estimates; bytes in bytes, rates per second)."""

    quorum: int
    versions_per_round: float  # expected staleness of an update, in versions
    merge_updates: float  # updates per merge (the quorum: the aggregation capacity keeps merges that size)
    merges_total: float  # versions (outer steps) over the run
    merge_s: float  # one quorum-sized merge, stats + apply, on the aggregator fleet
    merge_interval_s: float  # time to fill a quorum at the projected rate
    agg_s_per_update: float  # fleet seconds per update (t_u)
    agg_s_per_merge: float  # fleet seconds per merge, fixed part (T_0)
    agg_reads_per_merge: float  # range reads from the store per merge (both phases)
    agg_shards_needed: int  # shards (at these cores) whose quorum-sized merges keep up with the workers
    update_bytes: float
    download_bits_per_param: float
    download_bytes_per_round: float  # model only; training data is `data_bytes_per_round`
    data_bytes_per_round: float
    store_in_gbps: float
    store_out_workers_gbps: float  # what the workers download, before a CDN
    store_out_gbps: float  # origin egress: workers after the CDN + aggregator reads
    control_requests_per_round: float
    control_rps: float
    coordinator_gbps: float
    rate: float  # delivered updates per second, projected
    worker_rate: float  # what the workers alone would deliver
    slowdown: float  # worker_rate / rate (>= 1): how much longer than the workers alone
    bound: str
    resources: tuple[Resource, ...]


def quorum(s: Scenario) -> int:
    """The merge size the engine uses with all `gpus` active (core/scaling.py:effective_quorum)."""
    return effective_quorum(s.quorum, s.gpus, s.target_staleness)


def versions_per_round(s: Scenario) -> float:
    """Versions published while one task runs, i.e. an update's expected staleness (quorum-sized merges)."""
    return s.gpus * (1.0 - s.dropout) / quorum(s)


def download_bits(s: Scenario) -> tuple[float, dict[str, float]]:
    """(bits per parameter per round, its parts): the published deltas a worker skipped, or a checkpoint.

    A worker that kept up applies the `v` deltas published since its last task (or loads the last full
    checkpoint when that is cheaper, as Reconstructor.plan does); a fraction `full_fraction` of rounds (new
    or long-absent workers) loads the last anchor checkpoint plus on average (full_every - 1) / 2 deltas.
    """
    v = versions_per_round(s)
    catch = s.full_bits_per_param + (max(1, s.full_every) - 1) / 2 * s.publish_bits_per_param
    steady = min(v * s.publish_bits_per_param, catch)
    total = (1.0 - s.full_fraction) * steady + s.full_fraction * catch
    return total, {"versions_per_round": v, "steady": steady, "catch_up": catch, "total": total}


def _rate(capacity: float, per_update: float) -> float:
    return math.inf if per_update <= 0 else capacity / per_update


def dataplane(s: Scenario, compute_s: float, upload_s: float, download_s: float, round_s: float) -> DataPlane:
    """The infrastructure terms for a resolved, validated scenario and its worker round (see module doc).

    The projected rate is min(worker rate, each infrastructure limit). `bound` is the infrastructure term
    with the smallest limit when one is below the worker rate (the workers then wait), else the worker's
    slowest part: the largest of compute, upload and download time per round.
    """
    n, g, d = s.params, s.gpus, s.dropout
    q = quorum(s)
    v = versions_per_round(s)
    r = 1.0 / (1.0 - d)  # rounds per delivered update
    dl_bits = s.download_bits_per_param if s.download_bits_per_param is not None else download_bits(s)[0]
    upd = s.bits_per_param * n / 8
    dl = dl_bits * n / 8
    data = s.h * s.tokens_per_step * s.data_bytes_per_token
    worker_rate = g * (1.0 - d) / round_s

    # Aggregator state per merge (aggregate/merge.py): stats reads the re-basing arrays of k base versions,
    # apply reads theta, momentum, the old reconstruction and those k again, writes theta, momentum, the new
    # reconstruction, the published delta and (every full_every) the bf16 checkpoint.
    k = min(s.max_staleness, math.ceil(v)) + 1
    state_read = 4 * n * (3 + 2 * k)
    state_write = n * (12 + s.publish_bits_per_param / 8 + 2 / max(1, s.full_every))
    # Range reads per update and phase (protocol/wire_range.py): prefix and header, then each tensor's parts
    # (values, scales, offsets) in verified 1 MiB hash blocks.
    reads_update = 2 * (2 + upd / HASH_BLOCK + 3 * max(1.0, n / TENSOR_PARAMS))
    shards, cores, link = s.aggregator_shards, s.aggregator_cores, s.aggregator_gbps * 1e9
    t_u = (
        n * (AGG_STATS_NS_PER_PARAM_UPDATE + AGG_APPLY_NS_PER_PARAM_UPDATE) * 1e-9 / cores
        + 8 * 2 * upd / link
        + reads_update * s.store_read_latency_ms * 1e-3
    ) / shards
    t_0 = 8 * (state_read + state_write) / link / shards
    merge_s = t_0 + q * t_u

    # Control plane: per round a lease, the training shard, the commit, one GET per version manifest, and a
    # heartbeat every lease_s / 2 while training and uploading (worker/node.py:_Heartbeat).
    manifests = (1 - s.full_fraction) * v + s.full_fraction * ((max(1, s.full_every) - 1) / 2 + 1)
    beats = math.ceil((compute_s + upload_s) / (s.lease_s / 2))
    requests = 3 + manifests + beats
    # A manifest lists one entry (key, sha256, size, URL) per aggregator shard's delta and, for an anchor
    # version (1 in full_every), one per full-checkpoint chunk.
    manifest_bytes = s.manifest_entry_bytes * (shards + n / CHUNK_PARAMS / max(1, s.full_every))
    coord = requests * s.request_bytes + manifests * manifest_bytes + data

    store_in = upd + state_write / q
    workers_out = r * dl
    store_out = workers_out * (1 - s.cdn_hit_ratio) + 2 * upd + state_read / q
    store_bps = s.store_gbps * 1e9
    infra = [
        ("object-store ingress", 8 * store_in, store_bps, "Gbit/s", 1e-9),
        ("object-store egress", 8 * store_out, store_bps, "Gbit/s", 1e-9),
        ("aggregation", t_u + t_0 / q, 1.0, "fleet busy", 1.0),
        ("control-plane requests", r * requests, s.control_rps, "req/s", 1.0),
        ("coordinator link", 8 * r * coord, s.coordinator_gbps * 1e9, "Gbit/s", 1e-9),
    ]
    limits = {name: _rate(cap, per) for name, per, cap, _, _ in infra}
    times = {"worker compute": compute_s, "worker uplink": upload_s, "worker downlink": download_s}
    for name, t in times.items():
        limits[name] = _rate(g * (1.0 - d), t)
    rate = min([worker_rate] + [limits[name] for name, *_ in infra])
    slow = worker_rate / rate
    infra_bound = min((name for name, *_ in infra), key=lambda x: limits[x])
    bound = infra_bound if limits[infra_bound] < worker_rate else max(times, key=lambda x: times[x])

    res = [
        Resource(name, limits[name], t, round_s * slow, "s per round", t / (round_s * slow), t)
        for name, t in times.items()
    ]
    res += [
        Resource(
            name,
            limits[name],
            per * rate * scale,
            cap * scale,
            unit,
            per * rate / cap,
            per * worker_rate * scale,
        )
        for name, per, cap, unit, scale in infra
    ]
    total_updates = s.tokens / (s.h * s.tokens_per_step)
    return DataPlane(
        quorum=q,
        versions_per_round=v,
        merge_updates=q,
        merges_total=total_updates / q,
        merge_s=merge_s,
        merge_interval_s=q / rate,
        agg_s_per_update=t_u,
        agg_s_per_merge=t_0,
        agg_reads_per_merge=q * reads_update,
        # t_u and T_0 both scale as 1 / shards, so the fleet needed grows linearly with the load
        agg_shards_needed=max(1, math.ceil(shards * worker_rate * (t_u + t_0 / q) - 1e-9)),
        update_bytes=upd,
        download_bits_per_param=dl_bits,
        download_bytes_per_round=dl,
        data_bytes_per_round=data,
        store_in_gbps=8 * store_in * rate / 1e9,
        store_out_workers_gbps=8 * workers_out * rate / 1e9,
        store_out_gbps=8 * store_out * rate / 1e9,
        control_requests_per_round=requests,
        control_rps=r * requests * rate,
        coordinator_gbps=8 * r * coord * rate / 1e9,
        rate=rate,
        worker_rate=worker_rate,
        slowdown=slow,
        bound=bound,
        resources=tuple(res),
    )
