"""Verification through the server with real workers: honest worker processes with an error-feedback
codec (topk:0.1+q4) under verify_rate 1.0 reveal their residuals and pass every audit; a worker whose
upload outcome is unknown resets its residual (the chain accepts the reset) and still reveals when the
coordinator's lease reply asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainnet.store.state import open_state_store
from trainnet.verify import EMPTY_DIGEST
from trainnet.worker.client import Unreachable
from trainnet.worker.node import Worker, WorkerOptions
from trainnet.worker.report import read_task_logs

TASK_TOKENS = 5 * 8 * 32  # h * batch * seq

pytestmark = pytest.mark.timeout(150)


def audit_rows(state: Path) -> list[tuple]:
    """(task_id, node_id, status, ef_in, ef_out, steps) of every decided audit, from the state store's log."""
    store = open_state_store(f"sqlite:///{(state / 'coordinator.db').resolve()}")
    try:
        return [(a["task_id"], a["node_id"], a["status"], a["ef_in"], a["ef_out"], a["steps"])
                for a in store.log_list("audits", limit=100_000)]
    finally:
        store.close()


@pytest.mark.slow
def test_honest_workers_reveal_and_pass_every_audit(cluster_factory, wt, tmp_path: Path) -> None:
    cl = cluster_factory(tokens=10 * TASK_TOKENS, workers=2, verify_rate=1.0)
    cl.start_coordinator()
    assert cl.wait_ready()["codec"] == "topk:0.1+q4"
    cl.start_workers()
    wt.wait_for(lambda: all(not w.alive for w in cl.workers), 90, "all workers to exit")
    assert [w.returncode for w in cl.workers] == [0, 0], wt.dump_logs(cl)
    st = wt.wait_for(lambda: (s := cl.status())["audits_pending"] == 0 and s, 30, "the verifier to finish")
    assert st["done"] and st["updates_accepted"] >= 10, wt.dump_logs(cl)
    # Every accepted update was audited and passed; nobody was banned.
    table = cl.operator_status()["node_table"]
    assert st["audits_failed"] == 0 and not st["nodes_banned"], (table, wt.dump_logs(cl))
    assert st["audits_passed"] == st["updates_accepted"]
    assert st["verification"]["verify_steps"] == 5 * st["audits_passed"]
    for row in table:
        if row["accepted"]:
            assert row["audits_passed"] == row["accepted"] and 0 < row["score"] <= 1 and not row["banned"]
    audits = audit_rows(tmp_path / "coordinator")
    assert len(audits) == st["audits_passed"] and {a[2] for a in audits} == {"passed"}
    # With top-k every upload after a node's first carries a non-empty residual, which was revealed.
    carried = [a for a in audits if a[3] != EMPTY_DIGEST]
    assert len(carried) >= st["updates_accepted"] - 2
    rows = read_task_logs(tmp_path / "workers")
    revealed = [r for r in rows if "residuals revealed" in r["outcome"]]
    assert len(revealed) == sum(1 for a in audits if a[3] != EMPTY_DIGEST or a[4] != EMPTY_DIGEST), rows
    # passed: the pruner deletes the residual blobs (nothing is evidence of anything)
    wt.wait_for(lambda: not list((tmp_path / "coordinator" / "blobs" / "audits").glob("*")), 10, "residuals pruned")


@pytest.mark.slow
def test_unknown_upload_outcome_resets_residual_and_reveals_on_request(cluster_factory, wt, tmp_path: Path) -> None:
    cl = cluster_factory(tokens=10 * TASK_TOKENS, workers=0, verify_rate=1.0)
    cl.start_coordinator()
    cl.wait_ready()
    w = Worker(WorkerOptions(cl.url, tmp_path / "w", device="cpu", threads=1, max_tasks=2, retry_budget_s=10))
    real_upload, calls = w.client.upload, []

    def upload(task: dict, up: dict, body: bytes, sig: str, meta: dict) -> dict:
        reply = real_upload(task, up, body, sig, meta)
        calls.append(reply)
        if len(calls) == 1:  # delivered and accepted, but the worker never hears back
            raise Unreachable("reply lost (test)")
        return reply

    w.client.upload = upload
    reveals: list[str] = []
    real_reveal = w.client.reveal
    w.client.reveal = lambda task_id, body, **kw: reveals.append(task_id) or real_reveal(task_id, body, **kw)
    assert w.run() == 0
    assert calls[0]["accepted"] and calls[0]["audit"]["reveal"], calls
    rows = read_task_logs(tmp_path)
    assert rows[0]["outcome"].startswith("unknown") and rows[1]["accepted"], rows
    t1, t2 = rows[0]["task_id"], rows[1]["task_id"]
    # The first task's residuals were revealed when the next lease reply listed it as due, then the second's.
    assert reveals == [t1, t2] and not w.revealable
    st = wt.wait_for(lambda: (s := cl.status())["audits_passed"] == 2 and s, 30, "both audits to pass")
    assert not st["nodes_banned"] and st["audits_failed"] == 0
    audits = {a[0]: a for a in audit_rows(tmp_path / "coordinator")}
    assert audits[t1][3] == EMPTY_DIGEST and audits[t1][4] != EMPTY_DIGEST
    # After the unknown outcome the worker started again from a zero residual: the chain accepted the reset.
    assert audits[t2][3] == EMPTY_DIGEST and audits[t2][4] != EMPTY_DIGEST


@pytest.mark.slow
def test_restarted_worker_reveals_from_disk(cluster_factory, wt, tmp_path: Path) -> None:
    """An honest worker killed between an audited upload and its reveal is not banned: the residual pair
    was saved before the upload, and the restarted worker reveals it when the lease reply asks."""
    cl = cluster_factory(tokens=10 * TASK_TOKENS, workers=0, verify_rate=1.0)
    cl.start_coordinator()
    cl.wait_ready()
    opts = WorkerOptions(cl.url, tmp_path / "w", device="cpu", threads=1, max_tasks=1, retry_budget_s=10)
    first = Worker(opts)

    def lost_reveal(task_id: str, body: bytes, **kw) -> dict:
        raise Unreachable("worker died before revealing (test)")

    first.client.reveal = lost_reveal
    assert first.run() == 0
    t1 = read_task_logs(tmp_path)[0]["task_id"]
    assert list((tmp_path / "w").rglob(f"reveal/*-{t1}.safetensors")), "reveal pair not saved on disk"
    second = Worker(opts)  # a new process: nothing in memory
    reveals: list[str] = []
    real_reveal = second.client.reveal
    second.client.reveal = lambda task_id, body, **kw: reveals.append(task_id) or real_reveal(task_id, body, **kw)
    assert second.run() == 0
    assert reveals[0] == t1, reveals
    st = wt.wait_for(lambda: (s := cl.status())["audits_passed"] == 2 and s, 30, "both audits to pass")
    assert not st["nodes_banned"] and st["audits_failed"] == 0
    assert not list((tmp_path / "w").rglob("reveal/*.safetensors"))  # revealed: nothing left behind


def test_reveal_store_keeps_the_newest_pairs(tmp_path: Path) -> None:
    import torch

    from trainnet.worker.reveal import RevealStore

    store = RevealStore(tmp_path / "r", limit=2)
    pair = ({"w": torch.ones(3)}, {"w": torch.zeros(3)})
    for t in ("t1", "t2", "t3"):
        store.put(t, *pair)
    assert store.body("t1") is None and store.body("t2") and store.body("t3")
    store.put("../evil", *pair)  # not a task id: never a path outside the store
    assert sorted(p.name.split("-", 1)[1] for p in (tmp_path / "r").iterdir()) == ["t2.safetensors", "t3.safetensors"]
    store.forget("t2")
    assert store.body("t2") is None
