"""`trainnet demo` end to end: a tiny fast variant and its scale-out topology by default, the real one (with
chaos) as slow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from trainnet.devservers.postgres import find_pg_bin
from trainnet.worker.demo import demo_cmd

TINY = ["--tiny", "--workers", "2", "--tokens", "10240", "--timeout", "240"]


def test_tiny_demo_runs_end_to_end(tmp_path: Path) -> None:
    res = CliRunner().invoke(demo_cmd, [*TINY, "--out", str(tmp_path / "run"), "--json", str(tmp_path / "d.json")])
    assert res.exit_code == 0, res.output
    out = res.output
    for text in ("starting 2 workers", "training loss vs tokens", "bytes (measured", "coordinator: accepted",
                 "final model v", "held-out loss", "sampled from the final model"):
        assert text in out, out
    assert (tmp_path / "run" / "final_model.safetensors").exists()
    assert "   | " in out  # sampled lines
    fig = json.loads((tmp_path / "d.json").read_text())
    assert fig["tokens"] >= 10240 and fig["updates_accepted"] >= 2
    assert 0 < fig["final_val_loss"] < math.log(256)
    assert fig["worker_model_bytes_down"] > 0 and fig["download_bits_per_param"] > 0


def test_scale_out_demo_moves_no_update_bytes_through_the_coordinator(tmp_path: Path) -> None:
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    res = CliRunner().invoke(demo_cmd, [*TINY, "--scale-out", "--out", str(tmp_path / "run"), "--json", "-"])
    assert res.exit_code == 0, res.output
    fig = json.loads(res.stdout)  # only the JSON on stdout; the summary went to stderr
    assert fig["db"] == ("postgresql" if find_pg_bin() else "sqlite") and fig["blob_store"] == "s3"
    assert fig["aggregator_shards"] == 2 and fig["updates_accepted"] >= 2
    assert fig["coordinator_update_bytes_in"] == 0
    # every accepted update went into the object store (presigned PUTs), and more: published versions
    assert fig["object_store_bytes_in"] > fig["worker_bytes_up"] > 0
    assert fig["object_store_by_method"]["PUT"]["requests"] >= fig["uploads"]
    assert 0 < fig["final_val_loss"] < math.log(256)
    agg_logs = "".join((tmp_path / "run" / "logs" / f"aggregator{i}.log").read_text() for i in range(2))
    assert "shard 0 apply done" in agg_logs and "shard 1 apply done" in agg_logs, agg_logs[-2000:]


@pytest.mark.slow
def test_default_demo_with_chaos(tmp_path: Path) -> None:
    res = CliRunner().invoke(demo_cmd, ["--chaos", "--tokens", "300000", "--out", str(tmp_path),
                                        "--timeout", "400"])
    assert res.exit_code == 0, res.output
    assert "[chaos]" in res.output and "sampled from the final model" in res.output


def test_write_toml_nests_tables(tmp_path: Path) -> None:
    """[model.hf] (and deeper) tables, None left out: what an hf run.toml needs."""
    import tomllib

    from trainnet.worker.procs import write_toml

    data = {"name": "x", "model": {"spec": "hf", "block_size": 8, "init": None,
                                   "hf": {"model_type": "llama", "rope_scaling": {"rope_type": "linear", "factor": 2.0},
                                          "a.b": 1}}, "sim": {"tokens": 5}}
    got = tomllib.loads(write_toml(tmp_path / "r.toml", data).read_text())
    data["model"].pop("init")
    assert got == data
