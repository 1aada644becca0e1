"""`trainnet report` on a finished coordinator run and on simulator JSON; the event log and the held-out
loss curve are durable."""

from __future__ import annotations

import json
import re
import time

import pytest
from click.testing import CliRunner
from dash_helpers import LiveRun

from servers.coordinator import CoordinatorProc, free_port, make_run
from trainnet.config import load_config
from trainnet.dashboard.report import load_source, open_run_store, report_cmd
from trainnet.sim.simulator import simulate
from trainnet.sim.sync import run_sync

PNG = b"\x89PNG\r\n\x1a\n"


def _check_pngs(plots_dir, names):
    for name in names:
        data = (plots_dir / f"{name}.png").read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name
        assert data[12:16] == b"IHDR"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny coordinator run fed to its end (two in-test clients), then stopped gracefully."""
    import torch

    torch.set_num_threads(1)
    run = LiveRun(tmp_path_factory.mktemp("finished"), tokens=3200)
    try:
        view = run.finish()
    finally:
        run.close()
    return run, view


def test_report_on_finished_run(finished, tmp_path):
    run, view = finished
    out = tmp_path / "report"
    res = CliRunner().invoke(report_cmd, [str(run.state), "--out", str(out)])
    assert res.exit_code == 0, res.output
    _check_pngs(out / "plots", ["loss_tokens", "loss_time", "bytes_per_node", "node_timeline", "contributions",
                                "energy_cost"])
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and "src='http" not in page
    assert "![Loss vs accepted tokens](plots/loss_tokens.png)" in (out / "report.md").read_text()
    data = load_source(run.state)
    assert data["val_curve"][-1]["version"] == view["model_version"]  # the final version was evaluated
    assert data["val_curve"][-1]["val_loss"] == view["val_loss"]  # one held-out figure everywhere
    assert data["energy"]["estimated_joules"] == pytest.approx(12.5 * view["updates"]["updates_accepted"])
    assert sum(r["tokens"] for r in data["nodes"]) == view["tokens"] == 3200
    assert "3,200" in res.output and "estimate" in res.output


def test_event_log_is_complete_and_ordered(finished):
    run, _ = finished
    store = open_run_store(run.state)
    try:
        events = store.events_since(0, 100_000)
        tail = store.events_tail(5)
    finally:
        store.close()
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    kinds = [e["kind"] for e in events]
    assert "run_done" in kinds and {"time", "kind", "data"} <= set(events[0])
    # Audits of the last updates may still be decided after the run is done; nothing else happens then.
    assert all(k.startswith("audit_") for k in kinds[kinds.index("run_done") + 1:]), kinds
    assert tail == events[-5:]


def test_val_curve_survives_restart(finished):
    run, view = finished
    before = load_source(run.state)["val_curve"]
    srv = CoordinatorProc(run.run_toml, run.state, free_port())
    try:
        srv.wait_ready()
        assert srv.operator_get("/v1/status")["model_version"] == view["model_version"]
        time.sleep(1.0)  # an evaluator round: the final version already has its loss, nothing is added
    finally:
        srv.stop()
    assert load_source(run.state)["val_curve"] == before


def test_report_from_simulation_json_with_sync_baseline(tmp_path):
    import torch

    torch.set_num_threads(1)
    cfg = load_config(make_run(tmp_path, tokens=3200), ["sim.workers=2", "sim.eval_every=1", "sim.seed=1",
                                                         "sim.eval_batches=2"])
    (tmp_path / "async.json").write_text(json.dumps(simulate(cfg)))
    (tmp_path / "sync.json").write_text(json.dumps(run_sync(cfg)))
    out = tmp_path / "sim-report"
    res = CliRunner().invoke(report_cmd, [str(tmp_path / "async.json"), "--baseline", str(tmp_path / "sync.json"),
                                          "--out", str(out)])
    assert res.exit_code == 0, res.output
    _check_pngs(out / "plots", ["loss_tokens", "loss_time", "bytes_per_node", "node_timeline", "contributions"])
    assert not (out / "plots" / "energy_cost.png").exists()  # the simulator does not meter energy
    assert "Energy and cost" in (out / "report.md").read_text()  # ... and the report says it is not drawn
    data = load_source(tmp_path / "async.json", tmp_path / "sync.json")
    assert len(data["baseline"]) >= 2 and len(data["val_curve"]) >= 2
    ids = {n["node_id"] for n in data["nodes"]}  # virtual workers have real keys, so real node ids
    assert len(ids) == 2 and all(re.fullmatch(r"n[0-9a-f]{16}", i) for i in ids)
    # The sync result alone is its own baseline.
    assert load_source(tmp_path / "sync.json")["baseline"]
