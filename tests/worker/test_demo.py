"""`trainnet demo` end to end: a tiny fast variant by default, the real one (with chaos) as slow."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from trainnet.worker.demo import demo_cmd


def test_tiny_demo_runs_end_to_end(tmp_path: Path) -> None:
    res = CliRunner().invoke(demo_cmd, ["--tiny", "--workers", "2", "--tokens", "10240", "--out", str(tmp_path),
                                        "--timeout", "90"])
    assert res.exit_code == 0, res.output
    out = res.output
    for text in ("training loss vs tokens", "bytes (measured", "coordinator: accepted", "final model v",
                 "held-out loss", "sampled from the final model"):
        assert text in out, out
    assert (tmp_path / "final_model.safetensors").exists()
    assert "   | " in out  # sampled lines


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
