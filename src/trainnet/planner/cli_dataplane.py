"""The data-plane part of `trainnet estimate`'s report: one table of resources and the lines that explain it.

    print_dataplane(console, scenario, projection)     # no-op for a workers-only projection

Every figure is a projection from planner/dataplane.py; the aggregation figures scale a measurement
(bench/results/aggregate.md), which the printed text says.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from trainnet.planner.dataplane import AGG_SOURCE, WORKER_TERMS, download_bits
from trainnet.planner.estimate import Projection, Scenario


def _num(x: float, unit: str) -> str:
    if math.isinf(x):
        return "unlimited"
    if unit == "s per round":
        return f"{x:,.0f} s"
    if unit == "Gbit/s":
        return f"{x:.3g} Gbit/s"
    if unit == "req/s":
        return f"{x:.3g} req/s"
    return f"{x:.1%}"  # fleet busy fraction


def _hours(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s:,.0f} s"


def print_dataplane(con: Console, s: Scenario, p: Projection) -> None:
    """The resources table (load, capacity, utilization, headroom) and the staleness/merge/download lines."""
    dp = p.dataplane
    if dp is None:
        return
    r = s.resolved()
    t = Table(title="Data plane at the projected rate (all figures are estimates)")
    for c in ("resource", "load", "capacity", "utilization", "headroom", "needed by the workers' rate"):
        t.add_column(c, justify="left" if c == "resource" else "right")
    for res in dp.resources:
        worker = res.name in WORKER_TERMS
        cap = "round " + _num(res.capacity, res.unit) if worker else _num(res.capacity, res.unit)
        head = "-" if math.isinf(res.max_rate) else f"x{res.max_rate / dp.rate:,.2f}"
        name = res.name + (" (bound)" if res.name == dp.bound else "")
        t.add_row(
            name,
            _num(res.demand, res.unit),
            cap,
            f"{res.utilization:.1%}",
            head,
            "-" if worker else _num(res.needed, res.unit),
        )
    con.print(t)
    con.print(
        "headroom: how many times the projected update rate that resource alone would sustain; needed: its "
        "load if the infrastructure kept up with the workers (aggregation: x the fleet)."
    )
    con.print(
        f"Staleness: quorum {dp.quorum:,} updates per merge (max({r.quorum}, ceil({r.gpus:,} / "
        f"{r.target_staleness:g}))), expected staleness {dp.versions_per_round:.2f} versions (gpus x (1 - dropout)"
        f" / quorum); {dp.merges_total:,.0f} versions over the run, one every {_hours(dp.merge_interval_s)}."
    )
    if dp.versions_per_round > r.max_staleness:
        con.print(
            f"[yellow]expected staleness exceeds max_staleness {r.max_staleness}: most updates would be "
            "rejected as too stale[/yellow]"
        )
    con.print(
        f"Merge: {dp.quorum:,} x {dp.update_bytes / 1e9:.3g} GB = {dp.quorum * dp.update_bytes / 1e12:.3g} TB of "
        f"updates read twice (stats, apply) in ~{dp.agg_reads_per_merge:,.0f} range reads: {_hours(dp.merge_s)} on "
        f"{r.aggregator_shards} shard(s) x {r.aggregator_cores} core(s) ({dp.agg_s_per_merge:,.0f} s fixed + "
        f"{dp.agg_s_per_update:.3g} s per update; compute scaled from {AGG_SOURCE}); keeping up with the "
        f"workers takes {dp.agg_shards_needed:,} shard(s)."
    )
    if r.download_bits_per_param is None:
        _, parts = download_bits(r)
        how = (
            f"{parts['versions_per_round']:.2f} versions x {r.publish_bits_per_param:g} (published deltas), or "
            f"{parts['catch_up']:.1f} from the last checkpoint for {r.full_fraction:.0%} of rounds"
        )
    else:
        how = "given"
    con.print(
        f"Download per round: {p.download_bits_per_param:.3g} bits/param ({how}): "
        f"{dp.download_bytes_per_round / 1e9:.3g} GB of model + {dp.data_bytes_per_round / 1e6:.3g} MB of training data."
    )
    con.print(
        f"Object store: {dp.store_in_gbps:.3g} Gbit/s in, {dp.store_out_gbps:.3g} Gbit/s out (workers download "
        f"{dp.store_out_workers_gbps:.3g} Gbit/s, a CDN serving {r.cdn_hit_ratio:.0%}). Control plane: "
        f"{dp.control_requests_per_round:,.0f} requests per round, {dp.control_rps:.3g} req/s, "
        f"{dp.coordinator_gbps:.3g} Gbit/s."
    )
    alone = p.wall_days / p.slowdown
    con.print(
        f"Bound: {p.bound}; wall time {p.wall_days:.2f} d (the workers alone: {alone:.2f} d, "
        f"infrastructure slowdown x{p.slowdown:.2f})."
    )
