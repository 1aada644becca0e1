"""Simulator runs on a tiny config: accounting is measured, runs are reproducible, faults are applied."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from trainnet.cli import main
from trainnet.sim.simulator import simulate
from trainnet.sim.sync import run_sync


@pytest.fixture
def tiny_config(make_tiny_config):
    return make_tiny_config


def test_async_run_accounts_measured_bytes_and_tokens(small_corpus, tiny_config):
    cfg = tiny_config(**{"sim.codec": '"fp32"'})
    r = simulate(cfg, corpus=small_corpus)
    task_tokens = 5 * 4 * 32
    assert r["tokens"] >= cfg.sim.tokens and r["tokens"] % task_tokens == 0
    assert r["updates_accepted"] * task_tokens == r["tokens"]
    # every upload is a serialized fp32 update of the whole model plus a small header
    assert r["uploads"] * 4 * r["params"] < r["bytes_up_total"] < r["uploads"] * (4 * r["params"] + 4096)
    assert r["bytes_up_total"] == sum(n["bytes_up"] for n in r["nodes"])
    assert r["ddp_bytes_up_per_worker"] == 4 * r["params"] * r["tokens"] / (4 * 32 * cfg.sim.workers)
    assert r["curve"][0]["val_loss"] > r["final_val_loss"]
    assert r["outer_steps"] >= r["updates_accepted"] // cfg.consensus.quorum


def test_async_run_is_reproducible(small_corpus, tiny_config):
    a = simulate(tiny_config(**{"sim.dropout": 0.3}), corpus=small_corpus)
    b = simulate(tiny_config(**{"sim.dropout": 0.3}), corpus=small_corpus)
    assert a["final_val_loss"] == b["final_val_loss"] and a["updates_dropped"] == b["updates_dropped"]


def test_dropout_and_departures_lose_tasks_but_not_data(small_corpus, tiny_config):
    cfg = tiny_config(**{"sim.dropout": 0.4, "sim.depart_fraction": 0.25, "sim.speed_sigma": 0.5,
                         "sim.slow_fraction": 0.25, "sim.lag_s": 1.0, "sim.late_fraction": 0.25})
    r = simulate(cfg, corpus=small_corpus)
    assert r["updates_dropped"] > 0 and r["leases_expired"] > 0
    assert r["tokens"] >= cfg.sim.tokens  # the budget is still met by accepted work
    assert r["tokens_computed"] >= r["tokens"]
    assert len({n["speed"] for n in r["nodes"]}) > 1


def test_sync_baseline_counts_every_step(small_corpus, tiny_config):
    cfg = tiny_config(**{"sim.algo": "sync"})
    r = run_sync(cfg, corpus=small_corpus)
    steps = round(cfg.sim.tokens / (4 * 4 * 32))
    assert r["outer_steps"] == steps and r["bytes_up_per_worker"] == 4 * r["params"] * steps
    assert r["final_val_loss"] < r["curve"][0]["val_loss"]


def test_cli_smoke_writes_json(tmp_path):
    out = tmp_path / "r.json"
    args = ["simulate", "--quiet", "--workers", "3", "--tokens", "6000", "--seed", "1", "--json", str(out)]
    args += [f"--set={k}" for k in [
        "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "data.max_bytes=524288",
        "data.shard_bytes=32768", "data.val_every=4", "consensus.h=5", "inner.batch_size=4", "sim.eval_batches=2"]]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    for key in ["final_val_loss", "tokens", "outer_steps", "updates_accepted", "updates_dropped",
                "bytes_up_per_worker", "ddp_bytes_up_per_worker", "wall_s", "config"]:
        assert key in data
    assert data["config"]["sim"]["workers"] == 3 and data["config"]["sim"]["seed"] == 1
    assert "val_loss" in res.output


def test_cli_bad_override_is_a_clear_error():
    res = CliRunner().invoke(main, ["simulate", "--set", "consensus.nope=1"])
    assert res.exit_code != 0 and "consensus.nope" in res.output
    res = CliRunner().invoke(main, ["simulate", "--set", "sim.workers=many"])
    assert res.exit_code != 0 and "sim.workers" in res.output


def test_cli_bad_data_path_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(main, ["simulate", "--quiet", "--data", str(tmp_path)])
    assert res.exit_code != 0 and str(tmp_path) in res.output


def test_default_codec_compresses_uploads(small_corpus, tiny_config):
    cfg = tiny_config()
    assert cfg.sim.codec == "q2"
    r = simulate(cfg, corpus=small_corpus)
    # 2-bit values + fp16 scale and offset per 64 = 2.5 bits per parameter, plus a small header per upload
    assert r["uploads"] * r["params"] * 2.5 / 8 < r["bytes_up_total"] < r["uploads"] * (r["params"] * 2.5 / 8 + 8192)
