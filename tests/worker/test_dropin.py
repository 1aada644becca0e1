"""The drop-in API: examples/dropin_train.py trains against a real coordinator on loopback (the documented
example, as a user runs it); its first update is audited by recomputation and passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainnet.dropin import bind_parameters
from trainnet.models import ModelConfig, build_model
from trainnet.train.local import params_of
from trainnet.worker.procs import LocalCluster, child_env

ROOT = Path(__file__).resolve().parents[2]


def test_dropin_example_trains_a_run_and_passes_its_audit(tmp_path: Path, wt) -> None:
    cl = LocalCluster(tmp_path, ROOT / "examples" / "dropin_run.toml", workers=0)
    with cl:
        cl.start_coordinator()
        cl.wait_ready()
        out = subprocess.run([sys.executable, str(ROOT / "examples" / "dropin_train.py"), "--coordinator", cl.url,
                              "--state", str(tmp_path / "node")], env=child_env(), capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        st = cl.status()
        assert st["done"] and st["updates_accepted"] == 4 and st["updates_rejected"] == 0, st
        # The node's first update is always audited (probation): the coordinator recomputed the task with
        # run_task from its public inputs and the drop-in loop's update matched.
        st = wt.wait_for(lambda: (s := cl.status())["audits_pending"] == 0 and s["audits_passed"] >= 1 and s, 90,
                         "the probation audit")
        assert st["audits_failed"] == 0 and not st["nodes_banned"], st
        assert cl.operator_status()["node_table"][0]["accepted"] == 4
    rows = [json.loads(line) for line in (tmp_path / "node" / "tasks.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["accepted"] for r in rows), rows
    assert rows[-1]["loss_last"] < rows[0]["loss_first"]  # the loss was read from the user's forward
    assert "done: accepted 4" in out.stdout and "step 0 loss" in out.stdout, out.stdout


def test_bind_parameters_by_name_or_under_the_runs_prefix() -> None:
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
    model = build_model(cfg, seed=0)
    template = params_of(model)
    assert set(bind_parameters(build_model(cfg, seed=1), template)) == set(template)

    class Wrapped(torch.nn.Module):  # a run whose names carry a prefix (as spec "hf": "hf.")
        def __init__(self) -> None:
            super().__init__()
            self.hf = build_model(cfg, seed=2)

    prefixed = params_of(Wrapped())
    bound = bind_parameters(model, prefixed)
    assert set(bound) == set(prefixed) and bound["hf.wte.weight"] is model.wte.weight
    with pytest.raises(ValueError, match="not the run's"):
        bind_parameters(torch.nn.Linear(2, 2), template)
    with pytest.raises(ValueError, match="shape"):
        bind_parameters(build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16)), template)
