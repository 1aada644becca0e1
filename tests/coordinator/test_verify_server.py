"""Verification by recomputation through a real coordinator process on 127.0.0.1: a forged update is
recomputed, fails and bans its node; a broken residual chain bans; a reset to the empty residual is
allowed; bad reveals are refused with clear codes and change nothing; a missing reveal fails the audit;
a pending audit (and its base checkpoint) survives a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
from helpers import free_port, make_run
from verify_helpers import VERIFY_SETS, Node, VerifyServer, node_row, status, wait_for

from trainnet.coordinator.store import DROPPED
from trainnet.verify import EMPTY_DIGEST
from trainnet.worker.client import ApiError

pytestmark = pytest.mark.timeout(120)


def rows(state: Path, sql: str, args: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(state / "coordinator.db")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


@pytest.fixture
def server(tmp_path):
    """Start servers on demand (verify_rate 1.0, codec q2); all are stopped after the test."""
    made: list[VerifyServer] = []

    def start(limits: dict | None = None, sets: list[str] = (), restart: VerifyServer | None = None) -> VerifyServer:
        """A server; with `restart` (killed), a new process on its state dir and port."""
        port = restart.port if restart else free_port()
        srv = VerifyServer(make_run(tmp_path, tokens=100_000), tmp_path / "state", port,
                           sets=[*VERIFY_SETS, *sets], limits=limits)
        made.append(srv)
        srv.wait_ready()
        return srv

    yield start
    for srv in made:
        srv.stop()


def honest_task(node: Node) -> tuple[dict, bytes, dict, dict, dict]:
    task = node.lease()
    body, r_in, r_out = node.encode(task, node.train(task))
    reply = node.upload(task, body)
    assert reply["accepted"], reply
    return task, body, r_in, r_out, reply


def test_forged_update_is_recomputed_failed_and_its_node_banned(server, tmp_path):
    srv = server()
    cheat = Node(srv.url, tmp_path / "cheat")
    cheat.register()
    task = cheat.lease()
    torch.manual_seed(1)
    forged = {k: 0.01 * torch.randn_like(v) for k, v in cheat.train(task).items()}  # well-formed, wrong
    body, r_in, r_out = cheat.encode(task, forged)
    reply = cheat.upload(task, body)
    assert reply["accepted"] and reply["audit"]["reveal"] is True and reply["audit"]["deadline"] > 0, reply
    assert cheat.reveal(task, r_in, r_out) == {"ok": True, "task_id": task["task_id"]}
    st = wait_for(lambda: (s := status(srv.url))["nodes_banned"] and s, 30, "the cheater's ban")
    row = node_row(st, cheat.node_id)
    assert row["banned"] and row["ban_reason"] == "failed 1 audit(s)" and row["score"] == 0.0
    assert row["audits_failed"] == 1 and row["audits_passed"] == 0 and row["tasks_leased"] == 1
    ev = row["evidence"][-1]
    assert ev["task_id"] == task["task_id"] and ev["reason"] == "update_mismatch" and ev["rel_error"] > 0.05
    assert st["audits_failed"] == 1 and st["audits_pending"] == 0
    assert st["verification"]["verify_steps"] == task["hparams"]["steps"]
    # Its pending (buffered, unmerged) update was dropped: out of the budget and marked in the store.
    assert st["buffered"] == 0 and st["tokens"] == 0 and st["model_version"] == 0
    assert rows(srv_state(tmp_path), "SELECT merged_into FROM updates WHERE task_id=?", (task["task_id"],)) \
        == [(DROPPED,)]
    assert rows(srv_state(tmp_path), "SELECT status FROM audits") == [("failed",)]
    # The key is refused from now on.
    assert cheat.client.lease() == {"task": None, "reason": "banned", "retry_after_s": None}
    with pytest.raises(ApiError) as e:
        cheat.upload(task, body)
    assert e.value.status == 403 and e.value.code == "banned"
    cheat.close()


def srv_state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_chain_reset_allowed_chain_break_bans(server, tmp_path):
    srv = server()
    node = Node(srv.url, tmp_path / "n")
    node.register()
    t1, _, r_in1, r_out1, reply1 = honest_task(node)
    assert reply1["audit"]["reveal"]  # q2 leaves a residual
    node.reveal(t1, r_in1, r_out1)
    # A reset to the zero residual (what a worker does when an upload's outcome is unknown) is allowed.
    node.ef.reset()
    t2, _, r_in2, r_out2, _ = honest_task(node)
    assert r_in2 == {}
    node.reveal(t2, r_in2, r_out2)
    wait_for(lambda: status(srv.url)["audits_passed"] == 2, 30, "both honest audits to pass")
    # Now commit to an r_in that is neither the last accepted ef_out nor the empty residual.
    t3 = node.lease()
    body, _, _ = node.encode(t3, node.train(t3), ef_in="ab" * 32)
    with pytest.raises(ApiError) as e:
        node.upload(t3, body)
    assert e.value.status == 403 and e.value.code == "banned" and "chain" in e.value.detail
    st = status(srv.url)
    row = node_row(st, node.node_id)
    assert row["banned"] and row["ban_reason"] == "residual commitment chain broken"
    ev = row["evidence"][-1]
    assert ev["reason"] == "residual_chain_break" and ev["ef_in"] == "ab" * 32 and ev["task_id"] == t3["task_id"]
    assert ev["expected"] not in (EMPTY_DIGEST, "ab" * 32)
    assert st["leases_active"] == 0 and node.client.lease()["reason"] == "banned"
    node.close()


def test_chain_survives_restart_and_missing_commitments_are_refused(server, tmp_path):
    srv = server()
    node = Node(srv.url, tmp_path / "n")
    node.register()
    t1, _, r_in, r_out, _ = honest_task(node)
    node.reveal(t1, r_in, r_out)
    t2 = node.lease()
    delta = node.train(t2)
    body, _, _ = node.encode(t2, delta, ef_in=None)  # a run that verifies requires the commitments
    with pytest.raises(ApiError) as e:
        node.upload(t2, body)
    assert e.value.status == 422 and e.value.code == "bad_payload" and "ef_in" in e.value.detail
    srv.kill()
    srv = server(restart=srv)
    assert rows(tmp_path / "state", "SELECT node_id FROM chain") == [(node.node_id,)]
    stale = node.encode(t2, delta)[0]  # ef_in = r_out of t2's first encode: not the chain's head
    with pytest.raises(ApiError) as e:
        node.upload(t2, stale)
    assert e.value.code == "banned"
    node.close()


def test_bad_reveals_get_clear_errors_and_change_nothing(server, tmp_path):
    srv = server()
    node, other = Node(srv.url, tmp_path / "n"), Node(srv.url, tmp_path / "o")
    node.register()
    other.register()
    task, _, r_in, r_out, _ = honest_task(node)
    path = f"/v1/audit/{task['task_id']}/residuals"
    before = status(srv.url)
    assert before["verification"]["audits_awaiting_reveal"] == 1
    name = next(iter(r_out))

    def err(r, code_status, code):
        assert r.status_code == code_status and r.json()["error"] == code, (r.status_code, r.text)

    err(node.post(path, b"not safetensors"), 422, "bad_residuals")
    err(node.post(path, Node.reveal_body({}, {"evil": torch.zeros(3)})), 422, "bad_residuals")
    err(node.post(path, Node.reveal_body({}, {name: torch.zeros(2, 2)})), 422, "bad_residuals")
    err(node.post(path, Node.reveal_body({}, {name: r_out[name].double()})), 422, "bad_residuals")
    nan = r_out[name].clone()
    nan.view(-1)[0] = float("nan")
    err(node.post(path, Node.reveal_body(r_in, {**r_out, name: nan})), 422, "bad_residuals")
    err(node.post(path, Node.reveal_body(r_in, {**r_out, name: r_out[name] * 1.001})), 422, "residual_commitment")
    err(node.post(path, Node.reveal_body(r_in, {})), 422, "residual_commitment")
    err(node.post("/v1/audit/t9999999/residuals", Node.reveal_body(r_in, r_out)), 404, "unknown_audit")
    err(node.post("/v1/audit/t%2A1/residuals", b""), 404, "unknown_audit")
    err(other.post(path, Node.reveal_body(r_in, r_out)), 409, "task_not_held")
    good = Node.reveal_body(r_in, r_out)
    err(node.http.post(path, content=good), 401, "bad_signature")  # unsigned
    err(node.post(path, b"\0" * (2 << 20)), 413, "payload_too_large")  # limit: 8 x params + 1 MiB
    after = status(srv.url)
    for k in ("audits_pending", "audits_passed", "audits_failed", "nodes_banned", "verification"):
        assert after[k] == before[k], k
    assert rows(tmp_path / "state", "SELECT residual_path FROM audits") == [(None,)]
    assert not list((tmp_path / "state" / "audits").iterdir())
    # The right residuals are taken once; the audit then passes.
    assert node.reveal(task, r_in, r_out)["ok"]
    with pytest.raises(ApiError) as e:
        node.reveal(task, r_in, r_out)
    assert e.value.status == 409 and e.value.code == "already_revealed"
    st = wait_for(lambda: (s := status(srv.url))["audits_passed"] == 1 and s, 30, "the audit to pass")
    assert not st["nodes_banned"] and node_row(st, node.node_id)["score"] > 0
    assert rows(tmp_path / "state", "SELECT status, residual_path FROM audits") == [("passed", None)]
    assert not list((tmp_path / "state" / "audits").iterdir())  # a passed audit's residuals are not kept
    node.close()
    other.close()


def test_missing_reveal_fails_the_audit(server, tmp_path):
    srv = server(limits={"reveal_s": 1.5})
    node = Node(srv.url, tmp_path / "n")
    node.register()
    task, _, r_in, r_out, reply = honest_task(node)
    assert reply["audit"]["reveal"]
    st = wait_for(lambda: (s := status(srv.url))["nodes_banned"] and s, 30, "the no_reveal ban")
    row = node_row(st, node.node_id)
    assert row["audits_failed"] == 1 and row["evidence"][-1]["reason"] == "no_reveal"
    assert st["verification"]["verify_steps"] == 0  # nothing to recompute without the residuals
    with pytest.raises(ApiError) as e:
        node.reveal(task, r_in, r_out)
    assert e.value.code == "banned"
    node.close()


def test_pending_audit_and_its_base_survive_restart(server, tmp_path):
    # max_staleness 0 and keep_versions 1: only the audit keeps version 0's checkpoint from being pruned.
    sets, limits = ["consensus.max_staleness=0"], {"keep_versions": 1}
    srv = server(limits, sets)
    a, b = Node(srv.url, tmp_path / "a"), Node(srv.url, tmp_path / "b")
    a.register()
    b.register()
    ta, _, ra_in, ra_out, _ = honest_task(a)
    tb, _, rb_in, rb_out, _ = honest_task(b)  # completes the quorum: version 1
    b.reveal(tb, rb_in, rb_out)
    wait_for(lambda: status(srv.url)["audits_passed"] == 1, 30, "b's audit to pass")
    st = status(srv.url)
    assert st["model_version"] == 1 and st["audits_pending"] == 1
    srv.kill()
    srv = server(limits, sets, restart=srv)
    st = status(srv.url)
    assert st["audits_pending"] == 1 and st["verification"]["audits_awaiting_reveal"] == 1
    assert st["audits_passed"] == 1  # the counters are durable too
    assert rows(tmp_path / "state", "SELECT version FROM versions ORDER BY version") == [(0,), (1,)]
    reply = a.client.lease()  # the lease reply reminds the node of the reveal it owes
    assert reply["reveals_due"] == [ta["task_id"]], reply
    a.reveal(ta, ra_in, ra_out)
    st = wait_for(lambda: (s := status(srv.url))["audits_passed"] == 2 and s, 30, "a's audit to pass")
    assert not st["nodes_banned"] and st["audits_pending"] == 0
    assert all(r["audits_passed"] == 1 for r in st["node_table"])
    a.close()
    b.close()
