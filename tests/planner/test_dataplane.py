"""The planner's data-plane terms: a hand-computed case, units, monotonicity, and which term bounds a run."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from trainnet.planner import dataplane as dpm
from trainnet.planner.dataplane import WORKER_TERMS, download_bits, quorum, versions_per_round
from trainnet.planner.estimate import Scenario, project

# Round numbers: compute 300 s, upload 100 s, download 100 s per round (as in test_estimate.py), 100 GPUs,
# 20% dropout: the workers deliver 100 x 0.8 / 500 s = 0.16 updates/s.
D = Scenario(
    params=1e9,
    tokens=1e12,
    gpus=100,
    gpu="rtx3090",
    peak_flops=1e14,
    power_w=400.0,
    usd_per_gpu_hour=1.0,
    mfu=0.5,
    tokens_per_step=25_000,
    h=100,
    uplink_mbps=10.0,
    downlink_mbps=80.0,
    bits_per_param=1.0,
    download_bits_per_param=8.0,
    data_bytes_per_token=0.0,
    dropout=0.2,
    pue=1.0,
    quorum=4,
    target_staleness=2.0,
    max_staleness=8,
    lease_s=600.0,
    publish_bits_per_param=4.5,
    full_every=16,
    full_bits_per_param=16.0,
    full_fraction=0.05,
    store_gbps=10.0,
    cdn_hit_ratio=0.0,
    store_read_latency_ms=0.0,
    coordinator_gbps=1.0,
    control_rps=254.0,
    request_bytes=2048.0,
    manifest_entry_bytes=1024.0,
    aggregator_shards=10,
    aggregator_cores=1,
    aggregator_gbps=10.0,
)


@pytest.fixture
def round_agg(monkeypatch: pytest.MonkeyPatch) -> None:
    """Round aggregation constants: 10 + 40 ns per param x update."""
    monkeypatch.setattr(dpm, "AGG_STATS_NS_PER_PARAM_UPDATE", 10.0)
    monkeypatch.setattr(dpm, "AGG_APPLY_NS_PER_PARAM_UPDATE", 40.0)


def test_quorum_staleness_and_download_bits() -> None:
    # quorum = max(4, ceil(100 / 2)) = 50; staleness = 100 x 0.8 / 50 = 1.6 versions per round
    assert quorum(D) == 50 and versions_per_round(D) == pytest.approx(1.6)
    # catch-up = 16 + (16 - 1) / 2 x 4.5 = 49.75; steady = 1.6 x 4.5 = 7.2; 0.95 x 7.2 + 0.05 x 49.75 = 9.3275
    bits, parts = download_bits(D)
    assert parts["catch_up"] == pytest.approx(49.75) and parts["steady"] == pytest.approx(7.2)
    assert bits == pytest.approx(9.3275)
    # a small swarm keeps the configured quorum: 6 GPUs -> quorum 4, staleness 6 x 0.8 / 4 = 1.2
    assert quorum(replace(D, gpus=6)) == 4 and versions_per_round(replace(D, gpus=6)) == pytest.approx(1.2)
    # the 7B reference: quorum 2,100, staleness 4,200 x 0.7 / 2,100 = 1.4 = target 2 x (1 - dropout)
    assert quorum(Scenario()) == 2100 and versions_per_round(Scenario()) == pytest.approx(1.4)
    # a worker 20 versions behind loads the checkpoint instead: min(20 x 4.5, 49.75) = 49.75 for every round
    far = replace(D, target_staleness=0.0, quorum=4, gpus=100, full_fraction=0.0)  # staleness 80 / 4 = 20
    assert download_bits(far)[0] == pytest.approx(49.75)


def test_derived_download_is_used_and_data_adds_to_it() -> None:
    s = replace(D, download_bits_per_param=None, data_bytes_per_token=2.0)
    p = project(s)
    # (9.3275 x 1e9 + 8 x 100 x 25,000 x 2 bits) / 80e6 bit/s = (9.3275e9 + 4e7) / 8e7 = 117.09 s
    assert p.download_bits_per_param == pytest.approx(9.3275)
    assert p.download_s == pytest.approx((9.3275e9 + 4e7) / 8e7)


def test_hand_computed_dataplane(round_agg: None) -> None:
    p = project(D)
    dp = p.dataplane
    assert dp is not None and dp.worker_rate == pytest.approx(0.16) and dp.slowdown == 1.0
    assert p.bound == "worker compute" and p.wall_s == pytest.approx(2.5e6)  # as without the data plane
    # update 1e9 x 1 bit / 8 = 1.25e8 B; state per merge (k = ceil(1.6) + 1 = 3 base versions):
    # reads 4e9 x (3 + 2 x 3) = 3.6e10 B, writes 1e9 x (12 + 4.5 / 8 + 2 / 16) = 1.26875e10 B
    assert dp.update_bytes == pytest.approx(1.25e8)
    # store in: (1.25e8 + 1.26875e10 / 50) B x 8 x 0.16/s = 3.7875e8 x 1.28 = 0.4848 Gbit/s
    assert dp.store_in_gbps == pytest.approx(3.7875e8 * 8 * 0.16 / 1e9)
    # store out: 1.25 rounds x 1e9 B (8 bits/param) + 2 x 1.25e8 + 3.6e10 / 50 = 2.22e9 B per update
    assert dp.store_out_workers_gbps == pytest.approx(1.25e9 * 8 * 0.16 / 1e9)
    assert dp.store_out_gbps == pytest.approx(2.22e9 * 8 * 0.16 / 1e9)
    # aggregation per update: (1e9 x 50 ns + 8 x 2 x 1.25e8 B / 10 Gbit/s) / 10 shards = (50 + 0.2) / 10 s
    assert dp.agg_s_per_update == pytest.approx(5.02)
    # per merge, the state I/O: 8 x (3.6e10 + 1.26875e10) B / 10 Gbit/s / 10 shards = 3.895 s
    assert dp.agg_s_per_merge == pytest.approx(3.895)
    assert dp.merge_s == pytest.approx(3.895 + 50 * 5.02)
    agg = next(r for r in dp.resources if r.name == "aggregation")
    assert agg.max_rate == pytest.approx(1 / (5.02 + 3.895 / 50))
    assert agg.utilization == pytest.approx(0.16 * (5.02 + 3.895 / 50))
    # shards that keep up: 10 x 0.16 x 5.0979 = 8.16 -> 9; with 1 shard the same work takes 9 shards too
    assert (
        dp.agg_shards_needed == 9
        and project(replace(D, aggregator_shards=1)).dataplane.agg_shards_needed == 9
    )
    # control plane: lease + shard + commit + 0.95 x 1.6 + 0.05 x 8.5 manifests + ceil(400 / 300) = 2 beats
    assert dp.control_requests_per_round == pytest.approx(3 + 1.945 + 2)
    assert dp.control_rps == pytest.approx(1.25 * 6.945 * 0.16)
    # versions over the run: 1e12 / 2.5e6 tokens per update = 400,000 updates / 50 = 8,000; one per 50 / 0.16 s
    assert dp.merges_total == pytest.approx(8000) and dp.merge_interval_s == pytest.approx(312.5)


def test_store_link_bounds_and_slows_the_workers(round_agg: None) -> None:
    p = project(replace(D, store_gbps=2.0))
    dp = p.dataplane
    # egress needs 2.22e9 x 8 = 1.776e10 bits per update: 2 Gbit/s sustains 0.1126 updates/s < 0.16
    limit = 2e9 / 1.776e10
    assert p.bound == "object-store egress" and dp.rate == pytest.approx(limit)
    assert p.slowdown == pytest.approx(0.16 / limit) and p.wall_s == pytest.approx(2.5e6 * 0.16 / limit)
    assert p.round_s == pytest.approx(500 * 0.16 / limit) and p.utilization == pytest.approx(300 / p.round_s)
    egress = next(r for r in dp.resources if r.name == "object-store egress")
    assert egress.utilization == pytest.approx(1.0) and egress.needed == pytest.approx(1.776e10 * 0.16 / 1e9)
    # a CDN serving 90% of the worker downloads: 0.125e9 + 2.5e8 + 7.2e8 = 1.095e9 B -> 1.752 Gbit/s, not bound
    q = project(replace(D, store_gbps=2.0, cdn_hit_ratio=0.9))
    assert q.bound == "worker compute" and q.dataplane.store_out_gbps == pytest.approx(
        1.095e9 * 8 * 0.16 / 1e9
    )


def test_latency_counts_every_range_read(round_agg: None) -> None:
    # reads per update = 2 phases x (prefix + header + 1.25e8 / 2^20 hash blocks + 3 parts x 1e9 / 2^24 tensors)
    reads = 2 * (2 + 1.25e8 / 2**20 + 3 * 1e9 / 2**24)
    base, slow = project(D).dataplane, project(replace(D, store_read_latency_ms=1.0)).dataplane
    assert slow.agg_s_per_update - base.agg_s_per_update == pytest.approx(reads * 1e-3 / 10)
    assert slow.agg_reads_per_merge == pytest.approx(50 * reads)


def _check_bound(s: Scenario) -> str:
    p = project(s)
    dp = p.dataplane
    infra = [r for r in dp.resources if r.name not in WORKER_TERMS]
    slowest = min(infra, key=lambda r: r.max_rate)
    if slowest.max_rate < dp.worker_rate:  # the infrastructure is slower than the workers: it sets the pace
        assert p.bound == slowest.name and dp.rate == pytest.approx(slowest.max_rate) and p.slowdown > 1
        assert max(r.utilization for r in infra) == pytest.approx(1.0)
    else:  # the workers set the pace: the largest part of their round
        workers = [r for r in dp.resources if r.name in WORKER_TERMS]
        assert p.bound == max(workers, key=lambda r: r.demand).name and p.slowdown == 1.0
        assert all(r.utilization <= 1 + 1e-9 for r in infra)
    return p.bound


def test_bound_is_the_slowest_term(round_agg: None) -> None:
    cases = {
        "worker compute": D,
        "worker uplink": replace(D, uplink_mbps=1.0, overlap=True),
        "worker downlink": replace(D, downlink_mbps=2.0),
        "object-store egress": replace(D, store_gbps=1.0),
        "aggregation": replace(D, aggregator_shards=1),
        "control-plane requests": replace(D, control_rps=1.0),
        "coordinator link": replace(D, coordinator_gbps=1e-4),
    }
    for want, s in cases.items():
        assert _check_bound(s) == want
    # ingress never bounds: the aggregators read every update twice back out through the same link
    for s in [*cases.values(), replace(D, cdn_hit_ratio=0.99)]:
        dp = project(s).dataplane
        limit = {r.name: r.max_rate for r in dp.resources}
        assert limit["object-store ingress"] > limit["object-store egress"]
    _check_bound(Scenario())  # the reference scenario, with the measured constants


@pytest.mark.parametrize(
    ("field", "values", "falls", "base"),
    [  # each with a base scenario where that term matters
        ("store_gbps", [0.5, 1, 2, 5, 10, 100], True, {}),
        ("aggregator_shards", [1, 2, 4, 16, 64], True, {}),
        ("aggregator_cores", [1, 2, 8], True, {"aggregator_shards": 1}),
        ("cdn_hit_ratio", [0.0, 0.5, 0.9, 0.99], True, {"store_gbps": 1.0}),
        ("control_rps", [0.5, 1, 10, 1000], True, {}),
        ("coordinator_gbps", [1e-5, 1e-4, 1e-3, 1], True, {}),
        ("publish_bits_per_param", [2, 4.5, 8, 16], False, {"store_gbps": 1.0}),
        ("full_fraction", [0.0, 0.05, 0.3, 1.0], False, {"store_gbps": 1.0}),
        ("store_read_latency_ms", [0, 1, 20, 100], False, {}),
        ("params", [1e8, 1e9, 7e9], False, {}),
    ],
)
def test_wall_time_is_monotone(round_agg: None, field: str, values: list, falls: bool, base: dict) -> None:
    s = replace(D, download_bits_per_param=None, **base)
    walls = [project(replace(s, **{field: v})).wall_s for v in values]
    assert walls == pytest.approx(sorted(walls, reverse=falls))
    assert walls[0] != pytest.approx(walls[-1])  # the term matters in this scenario


def test_free_infrastructure_is_the_worker_model() -> None:
    free = replace(
        D,
        store_gbps=math.inf,
        coordinator_gbps=math.inf,
        control_rps=math.inf,
        aggregator_gbps=math.inf,
        aggregator_cores=10**9,
    )
    assert project(free).wall_s == pytest.approx(project(replace(D, dataplane=False)).wall_s)
    assert project(replace(D, dataplane=False)).dataplane is None


def test_units_of_the_reference_scenario() -> None:
    """Cross-check the reference's traffic in plain arithmetic (bytes -> Gbit/s) against the module."""
    p = project(Scenario(bits_per_param=2.503))
    dp = p.dataplane
    upd = 2.503 * 7e9 / 8  # 2.19 GB
    assert dp.update_bytes == pytest.approx(upd)
    # ingress is at least the updates: rate x update x 8 bits
    assert dp.store_in_gbps >= dp.rate * upd * 8 / 1e9
    assert dp.store_in_gbps == pytest.approx(dp.rate * upd * 8 / 1e9, rel=0.05)  # state writes are < 5%
    # the workers' downloads: rate / (1 - dropout) rounds x download bits x N / 1e9
    assert dp.store_out_workers_gbps == pytest.approx(dp.rate / 0.7 * p.download_bits_per_param * 7e9 / 1e9)


def test_measured_constants_match_the_benchmark_table() -> None:
    table = Path(__file__).resolve().parents[2] / "bench" / "results" / "aggregate.md"
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in table.read_text().splitlines()
        if line.startswith(f"| {dpm.AGG_MERGE} |")
    ]
    assert len(rows) == 1, f"no planner-input row for {dpm.AGG_MERGE} in {table}"
    assert (float(rows[0][1]), float(rows[0][2])) == (
        dpm.AGG_STATS_NS_PER_PARAM_UPDATE,
        dpm.AGG_APPLY_NS_PER_PARAM_UPDATE,
    )


def test_publish_bits_match_the_q4_codec() -> None:
    import torch

    from trainnet.codec import parse_codec

    enc = parse_codec("q4").encode(torch.randn(64 * 100))
    bits = 8 * sum(p.numel() * p.element_size() for p in enc.parts.values()) / (64 * 100)
    assert bits == Scenario().publish_bits_per_param == 4.5


def test_bad_dataplane_inputs() -> None:
    for bad in (
        {"store_gbps": 0.0},
        {"cdn_hit_ratio": 1.0},
        {"full_fraction": 1.5},
        {"aggregator_shards": 0},
        {"control_rps": -1.0},
        {"quorum": 0},
        {"store_read_latency_ms": -1.0},
    ):
        with pytest.raises(ValueError):
            project(replace(D, **bad))
