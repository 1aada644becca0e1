"""Hand-computed planner cases; the arithmetic is written out beside each assertion."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from trainnet.planner.estimate import (
    Scenario,
    baseline_scenario,
    default_bits_per_param,
    gpus_to_match,
    minimal_value,
    project,
    sweep,
    tokens_within,
)
from trainnet.planner.gpus import gpu_kind

# A scenario with round numbers (custom peak/power/price so the GPU table does not matter).
S = Scenario(
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
    dropout=0.2,
    overlap=False,
    idle_power_fraction=0.25,
    pue=1.0,
    co2_g_per_kwh=500.0,
    usd_per_kwh=0.1,
    include_energy_cost=False,
    data_bytes_per_token=0.0,
    dataplane=False,  # the workers' model alone; test_dataplane.py covers the infrastructure terms
)


def test_hand_computed_projection() -> None:
    p = project(S)
    # compute = H * 6 N tps / (peak * mfu) = 100 * 6e9 * 25,000 / (1e14 * 0.5) = 1.5e16 / 5e13 = 300 s
    assert p.compute_s == pytest.approx(300.0)
    # upload = 1 bit * 1e9 / 10e6 bit/s = 100 s; download = 8 * 1e9 / 80e6 = 100 s
    assert p.upload_s == pytest.approx(100.0)
    assert p.download_s == pytest.approx(100.0)
    # not overlapped: round = 300 + 100 + 100 = 500 s; utilization = 300 / 500 = 0.6
    assert p.round_s == pytest.approx(500.0)
    assert p.utilization == pytest.approx(0.6)
    # tokens/round = 100 * 25,000 = 2.5e6; wall = 1e12 / (100 * 0.8 * 2.5e6 / 500) = 1e12 / 4e5 = 2.5e6 s
    assert p.tokens_per_round == pytest.approx(2.5e6)
    assert p.wall_s == pytest.approx(2.5e6)
    assert p.wall_days == pytest.approx(2.5e6 / 86_400)
    # GPU-hours = 100 * 2.5e6 / 3600 = 69,444.4...
    assert p.gpu_hours == pytest.approx(69_444.444, rel=1e-6)
    # draw = 0.6 + 0.4 * 0.25 = 0.7; energy = 100 * 400 W * 2.5e6 s * 0.7 * PUE 1 = 7e10 J = 19,444.4 kWh
    assert p.energy_kwh == pytest.approx(7e10 / 3.6e6)
    # CO2 = 19,444.4 kWh * 500 g/kWh = 9,722.2 kg
    assert p.co2_kg == pytest.approx(7e10 / 3.6e6 * 0.5)
    # cost = 69,444.4 GPU-h * $1; electricity 19,444.4 kWh * $0.1 = $1,944.4 reported but not added
    assert p.cost_usd == pytest.approx(69_444.444, rel=1e-6)
    assert p.energy_cost_usd == pytest.approx(1_944.444, rel=1e-6)
    # rounds per GPU = wall / round = 5,000; updates merged = 1e12 / 2.5e6 = 400,000
    assert p.rounds_per_gpu == pytest.approx(5_000)
    assert p.total_updates == pytest.approx(400_000)


def test_energy_cost_and_pue_options() -> None:
    p = project(replace(S, include_energy_cost=True, pue=1.5))
    # energy scales with PUE: 19,444.4 * 1.5 = 29,166.7 kWh; cost = 69,444.4 + 2,916.7
    assert p.energy_kwh == pytest.approx(7e10 / 3.6e6 * 1.5)
    assert p.cost_usd == pytest.approx(69_444.444 + 2_916.667, rel=1e-6)


def test_overlap_hides_communication() -> None:
    p = project(replace(S, overlap=True))
    # round = max(300, 100 + 100) = 300 s -> utilization 1, wall = 1e12 / (100 * 0.8 * 2.5e6 / 300) = 1.5e6 s
    assert p.round_s == pytest.approx(300.0)
    assert p.utilization == pytest.approx(1.0)
    assert p.wall_s == pytest.approx(1.5e6)
    # comm-bound with overlap: uplink 2 Mbit/s -> upload 500 s, round = max(300, 600) = 600, util 0.5
    q = project(replace(S, overlap=True, uplink_mbps=2.0))
    assert q.round_s == pytest.approx(600.0)
    assert q.utilization == pytest.approx(0.5)


def test_no_dropout_and_idle_draw() -> None:
    p = project(replace(S, dropout=0.0, idle_power_fraction=0.0))
    # wall = 1e12 / (100 * 2.5e6 / 500) = 2e6 s; draw = utilization 0.6 only
    assert p.wall_s == pytest.approx(2e6)
    assert p.energy_kwh == pytest.approx(100 * 400 * 2e6 * 0.6 / 3.6e6)


def test_baseline_is_compute_bound_datacenter() -> None:
    b = project(baseline_scenario(S))
    h100 = gpu_kind("h100")
    # wall = 6 N D / (gpus * peak * mfu) = 6e21 / (512 * 989e12 * 0.4) = 29,623.4 s
    assert b.wall_s == pytest.approx(6e21 / (512 * 989e12 * 0.4))
    assert b.utilization == 1.0
    # energy = 512 * 700 W * wall * 1.0 * PUE 1.2
    assert b.energy_kwh == pytest.approx(512 * h100.power_w * b.wall_s * 1.2 / 3.6e6)
    assert b.cost_usd == pytest.approx(512 * b.wall_s / 3600 * h100.usd_per_hour)
    # GPUs of that kind matching a wall time: 512 GPUs match their own wall time
    assert gpus_to_match(baseline_scenario(S), b.wall_days) == pytest.approx(512)


def test_minimal_uplink_and_h() -> None:
    # Budget 2.5e6 s allows round <= 500 s -> upload <= 500 - 300 - 100 = 100 s -> uplink >= 1e9/100 = 10 Mbit/s
    up = minimal_value(S, "uplink_mbps", target_days=2.5e6 / 86_400)
    assert up == pytest.approx(10.0, rel=1e-5)
    # Budget 2e6 s allows round <= 400 s = compute + download: no finite uplink is enough
    assert minimal_value(S, "uplink_mbps", target_days=2e6 / 86_400) is None
    # wall(H) = 1e12 (3H + 200) / (100 * 0.8 * H * 25,000) = 5e5 (3 + 200/H): <= 2.5e6 iff H >= 100
    assert minimal_value(S, "h", target_days=2.5e6 / 86_400) == 100
    # <= 1.6e6 iff 200/H <= 0.2 iff H >= 1000
    assert minimal_value(S, "h", target_days=1.6e6 / 86_400) == 1000
    # gpus: wall is 2.5e8 / gpus s -> 1e6 s needs 250
    assert minimal_value(S, "gpus", target_days=1e6 / 86_400) == 250


def test_tokens_within_and_sweep() -> None:
    # wall is linear in tokens: 2.5e6 s for 1e12 tokens -> 1e6 s processes 4e11 tokens
    assert tokens_within(S, 1e6 / 86_400) == pytest.approx(4e11)
    rows = sweep(S, target_days=2.5e6 / 86_400, h_values=(50, 100, 200))
    # H=100 reproduces the 10 Mbit/s above; larger H needs less uplink, every row reaches the target
    assert rows[1]["min_uplink_mbps"] == pytest.approx(10.0, rel=1e-5)
    assert rows[2]["min_uplink_mbps"] < rows[1]["min_uplink_mbps"]
    # H=50: wall = 5e5 (3 + (100 + u)/50) <= 2.5e6 needs upload u <= 0 -> unreachable
    assert rows[0]["min_uplink_mbps"] is None
    for r in rows[1:]:
        assert r["wall_days"] <= 2.5e6 / 86_400 * (1 + 1e-9)


def test_gpu_table_fills_defaults_and_rejects_bad_inputs() -> None:
    r = Scenario().resolved()
    assert r.peak_flops == gpu_kind("rtx4090").peak_flops == 165.2e12
    assert gpu_kind("NVIDIA GeForce RTX 3090").key == "rtx3090"
    assert gpu_kind("NVIDIA H100 80GB HBM3").key == "h100"
    with pytest.raises(KeyError):
        gpu_kind("voodoo2")
    for bad in ({"mfu": 0.0}, {"dropout": 1.0}, {"uplink_mbps": 0.0}, {"pue": 0.9}, {"gpus": 0}):
        with pytest.raises(ValueError):
            project(replace(S, **bad))
    # a 7B model does not fit a 24 GB card (16 B/param = 112 GB)
    assert project(Scenario()).fits_in_memory is False
    assert math.isclose(project(Scenario()).memory_needed_gb, 112.0)


def test_default_bits_from_codec_table(tmp_path) -> None:
    value, source = default_bits_per_param(tmp_path / "missing.md")
    assert value == 2.5 and "q2" in source and "not found" in source
    table = tmp_path / "codecs.md"
    table.write_text(
        "# Codecs\n\n| codec | ratio | bits/param |\n|---|---|---|\n| int8 | 4x | 8.0 |\n"
        "| topk (default) | 35x | 0.62 |\n"
    )
    value, source = default_bits_per_param(table)
    assert value == pytest.approx(0.62) and source.startswith("measured")
    table.write_text("| codec | bits/param |\n|---|---|\n| int8 | 8 |\n")
    value, source = default_bits_per_param(table)
    assert value == 2.5 and "no 'default' row" in source


def test_fallback_bits_match_the_default_codec() -> None:
    import torch

    from trainnet.codec import parse_codec
    from trainnet.planner.estimate import DEFAULT_BITS_PER_PARAM

    enc = parse_codec("q2").encode(torch.randn(64 * 100))
    bits = 8 * sum(p.numel() * p.element_size() for p in enc.parts.values()) / (64 * 100)
    assert bits == DEFAULT_BITS_PER_PARAM
