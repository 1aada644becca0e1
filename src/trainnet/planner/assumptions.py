"""Where every planner input came from, for the printed assumptions table and the JSON report.

    rows = assumption_rows(scenario, baseline, bits_source="assumption: ...", given={"uplink_mbps"})
    for r in rows: print(r.name, r.value, r.source)

A field the user set on the command line is sourced "given on the command line"; every other value
names its source or says "assumption".
"""

from __future__ import annotations

from dataclasses import dataclass

from trainnet.planner import dataplane as dpm
from trainnet.planner.estimate import Scenario
from trainnet.planner.gpus import gpu_kind

GIVEN = "given on the command line"

SOURCES: dict[str, str] = {
    "params": "reference scenario: a 7B-parameter model",
    "tokens": "2T tokens, the budget Llama 2 7B was trained on (Touvron et al. 2023, arXiv:2307.09288)",
    "gpus": "reference scenario: ~4,200 consumer GPUs",
    "gpu": "reference scenario: RTX 3090/4090 class",
    "mfu": "assumption: 20% model FLOPs utilization: a 7B model's ~112 GB of training state does not fit a 24 GB card, so optimizer state is offloaded to the CPU (ZeRO-Offload, arXiv:2101.06840), which costs throughput",
    "tokens_per_step": "assumption: 16 x 2,048-token sequences per inner step (gradient accumulation)",
    "h": "DiLoCo inner steps per round H=500 (Douillard et al., arXiv:2311.08105)",
    "uplink_mbps": "assumption: residential uplink (cable/DSL class; fibre is often 100+ Mbit/s)",
    "downlink_mbps": "assumption: residential downlink",
    "download_bits_per_param": "derived: the published q4 deltas of the versions skipped per round (the last "
    "full checkpoint when cheaper), and for full_fraction of rounds the last bf16 checkpoint plus the deltas "
    "after it (planner/dataplane.py)",
    "data_bytes_per_token": "assumption: the task's training shard as uint16 token ids, served by the "
    "coordinator (GET /v1/shard); a vocabulary above 65,536 needs 4",
    "dropout": "assumption: 30% of rounds lost (DESIGN.md: a third of workers may vanish or lag)",
    "overlap": "assumption: no overlap - upload/download wait for compute (overlap = Streaming-DiLoCo style)",
    "idle_power_fraction": "assumption: a GPU waiting on the network draws 25% of board power",
    "pue": "assumption: homes have no cooling plant; ~10% PSU losses; host CPU/RAM not counted",
    "co2_g_per_kwh": "assumption: world average ~480 g CO2/kWh (Ember, Global Electricity Review 2024)",
    "usd_per_kwh": "assumption: residential electricity price",
    "include_energy_cost": "assumption: off - rental prices per GPU-hour already include electricity",
    "quorum": "engine default (src/trainnet/config.py consensus.quorum)",
    "target_staleness": "engine default (consensus.target_staleness): quorum = max(quorum, ceil(active nodes / "
    "target_staleness)), core/scaling.py",
    "max_staleness": "engine default (consensus.max_staleness): staler updates are rejected",
    "lease_s": "engine default (consensus.lease_s): a worker heartbeats every lease_s / 2",
    "publish_bits_per_param": "publish_codec q4 (engine default) by construction: 4 bits + fp16 scale and "
    "offset per 64 values",
    "full_every": "engine default (aggregate.full_every): a full checkpoint every 16 versions",
    "full_bits_per_param": "full checkpoints are bf16 (aggregate/merge.py)",
    "full_fraction": "assumption: 1 round in 20 starts from a full checkpoint (every GPU joins once, ~1 round in "
    "41 here, plus returns after long absences)",
    "store_gbps": "assumption: one object-store server with a 10 GbE link (self-hosted MinIO, or the filesystem "
    "backend on the coordinator host); S3/R2 scale further, at a price",
    "cdn_hit_ratio": "assumption: no CDN (0); one in front of pub/ serves every worker the same bytes",
    "store_read_latency_ms": "assumption: 1 ms per range read from a store on the aggregators' LAN (S3 "
    "first-byte latency is tens of ms)",
    "coordinator_gbps": "assumption: a 1 Gbit/s link for the control plane",
    "control_rps": "derived from a measurement: 1 / 3.94 ms, the median fsynced SQLite commit with 4,200 nodes "
    "(bench/results/state_store.md), one commit per request (group commit batches several)",
    "request_bytes": "assumption: a signed JSON request and its reply with HTTP headers (a lease reply carries "
    "a presigned URL)",
    "manifest_entry_bytes": "assumption: one blob in a version reply: key, sha256, size and a presigned URL",
    "aggregator_shards": "assumption: 64 aggregator processes, each owning 1/64 of the parameters "
    "(aggregate.shards)",
    "aggregator_cores": "assumption: 1 core per shard, the measured configuration (1 torch thread); extra cores "
    "count linearly, which bench/results/aggregate.md does not support (2 threads were no faster there)",
    "aggregator_gbps": "assumption: each aggregator reaches the object store at 10 Gbit/s",
    "dataplane": "model the infrastructure: object store, aggregators, control plane (planner/dataplane.py)",
}

BASELINE_SOURCES: dict[str, str] = {
    "baseline_gpus": "assumption: a 512-GPU H100 cluster (the report also gives the count that matches the swarm's wall time)",
    "baseline_gpu": "assumption: H100 SXM with NVLink/InfiniBand (fast interconnect, sync data parallel)",
    "baseline_mfu": "assumption: 40% MFU, typical of tuned large runs (communication folded into MFU)",
    "baseline_pue": "assumption: data-center PUE 1.2 (hyperscale; the industry average is higher)",
}


@dataclass(frozen=True)
class Assumption:
    """One row of the assumptions table."""

    name: str
    value: str
    source: str


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def assumption_rows(
    s: Scenario,
    baseline: Scenario,
    bits_source: str,
    given: set[str] | frozenset[str] = frozenset(),
) -> list[Assumption]:
    """All inputs of a projection and its baseline with their sources (see module docstring)."""
    r = s.resolved()
    kind = gpu_kind(s.gpu)
    derived = {
        "peak_flops": kind.flops_source,
        "power_w": kind.power_source,
        "usd_per_gpu_hour": kind.price_source,
        "bits_per_param": bits_source,
        "download_bits_per_param": GIVEN if r.download_bits_per_param is not None else None,
    }
    rows: list[Assumption] = []
    order = [
        "params",
        "tokens",
        "gpus",
        "gpu",
        "peak_flops",
        "power_w",
        "usd_per_gpu_hour",
        "mfu",
        "tokens_per_step",
        "h",
        "uplink_mbps",
        "downlink_mbps",
        "bits_per_param",
        "download_bits_per_param",
        "dropout",
        "overlap",
        "idle_power_fraction",
        "pue",
        "co2_g_per_kwh",
        "usd_per_kwh",
        "include_energy_cost",
        "data_bytes_per_token",
        "quorum",
        "target_staleness",
        "max_staleness",
        "lease_s",
        "publish_bits_per_param",
        "full_every",
        "full_bits_per_param",
        "full_fraction",
        "store_gbps",
        "cdn_hit_ratio",
        "store_read_latency_ms",
        "coordinator_gbps",
        "control_rps",
        "request_bytes",
        "manifest_entry_bytes",
        "aggregator_shards",
        "aggregator_cores",
        "aggregator_gbps",
        "dataplane",
    ]
    for name in order:
        src = GIVEN if name in given else derived.get(name) or SOURCES[name]
        value = getattr(r, name)
        if name == "download_bits_per_param" and value is None:
            value = dpm.download_bits(r)[0]
        rows.append(Assumption(name, _fmt(value), src))
    for name, value in (
        ("agg_stats_ns_per_param_update", dpm.AGG_STATS_NS_PER_PARAM_UPDATE),
        ("agg_apply_ns_per_param_update", dpm.AGG_APPLY_NS_PER_PARAM_UPDATE),
    ):
        rows.append(
            Assumption(name, _fmt(value), f"{dpm.AGG_SOURCE} (merge of {dpm.AGG_MERGE} updates, robust rule)")
        )
    b = baseline.resolved()
    bkind = gpu_kind(baseline.gpu)
    for name, value in (
        ("baseline_gpus", b.gpus),
        ("baseline_gpu", b.gpu),
        ("baseline_mfu", b.mfu),
        ("baseline_pue", b.pue),
    ):
        rows.append(Assumption(name, _fmt(value), GIVEN if name in given else BASELINE_SOURCES[name]))
    rows.append(Assumption("baseline_peak_flops", _fmt(b.peak_flops), bkind.flops_source))
    rows.append(Assumption("baseline_power_w", _fmt(b.power_w), bkind.power_source))
    rows.append(Assumption("baseline_usd_per_gpu_hour", _fmt(b.usd_per_gpu_hour), bkind.price_source))
    rows.append(
        Assumption(
            "train_bytes_per_param",
            "16",
            "mixed-precision AdamW: bf16 weights+grads, fp32 master+m+v (ZeRO, arXiv:1910.02054); no activations",
        )
    )
    return rows
