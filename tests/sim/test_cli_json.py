"""`trainnet simulate --json -` prints the result as JSON on stdout and everything else on stderr."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from trainnet.cli import main

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "data.max_bytes=524288",
        "data.shard_bytes=32768", "data.val_every=4", "consensus.h=5", "inner.batch_size=4", "sim.eval_batches=2"]


@pytest.mark.parametrize("json_args", [["--json", "-"], ["--json"]])
def test_simulate_json_dash_prints_pure_json_to_stdout(tmp_path, monkeypatch, json_args) -> None:
    monkeypatch.chdir(tmp_path)  # a file named "-" would land here
    args = ["simulate", "--workers", "2", "--tokens", "3000", "--seed", "1", *json_args]
    args += [f"--set={k}" for k in TINY] + ["--set=consensus.aggregator=\"mean\""]  # a WARNING line, on stderr
    res = CliRunner().invoke(main, args)  # no --quiet: the progress bar must not reach stdout either
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["config"]["sim"]["workers"] == 2 and data["tokens"] >= 3000
    assert "val_loss" in res.stderr and "WARNING" in res.stderr  # the summary and warnings went to stderr
    assert list(tmp_path.iterdir()) == []
