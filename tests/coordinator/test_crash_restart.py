"""Real coordinator processes on loopback, killed with SIGKILL at chosen instants and restarted.

Checks the durability promise: every acknowledged update is in the store, merged exactly once
(the final model equals a replay of the stored updates, version by version), nothing unacked is
half-applied, and the run finishes after restarts.
"""

from __future__ import annotations

import sqlite3

import httpx
import pytest
import torch
from helpers import Client, ServerProc, free_port, make_run
from safetensors.torch import load as st_load

from trainnet.config import load_config
from trainnet.coordinator.core import Buffered, Coordinator
from trainnet.data.corpus import load_corpus
from trainnet.model.gpt import GPT
from trainnet.protocol.wire import decode_update
from trainnet.sim.simulator import coordinator_config
from trainnet.train.local import flatten, params_of

pytestmark = pytest.mark.timeout(180)


def rows(state, sql, args=()):
    db = sqlite3.connect(state / "coordinator.db")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def replay_final_params(run, state) -> torch.Tensor:
    """Recompute the final model from the stored updates: one outer step per version, in order."""
    cfg = load_config(run)
    ccfg = coordinator_config(cfg)
    corpus = load_corpus(cfg.data.path, cfg.data.shard_bytes, cfg.data.val_every, cfg.data.max_bytes,
                         min_shard_bytes=cfg.model.block_size + 2)
    torch.manual_seed(ccfg.seed)
    coord = Coordinator(ccfg, corpus.manifest, params_of(GPT(cfg.model)))
    ups = rows(state, "SELECT task_id, node_id, tokens, staleness, path, merged_into FROM updates ORDER BY seq")
    for v in sorted({u[5] for u in ups}):
        group = [u for u in ups if u[5] == v]
        coord.buffer = [Buffered(u[1], u[0], flatten(decode_update((state / u[4]).read_bytes()).tensors,
                                                     coord.template), u[2], u[3], 0.0) for u in group]
        coord._aggregate(0.0)
        assert coord.version == v
    return coord.params_flat


def test_sigkill_at_every_stage_then_finish(tmp_path):
    run = make_run(tmp_path, tokens=2560)  # 8 tasks of 5 steps x 2 x 32 tokens; quorum 2 -> 4 versions
    state = tmp_path / "state"
    port = free_port()
    acked: list[str] = []

    # Life 1: crash inside the first merge, after the new checkpoint file is written, before the commit.
    srv = ServerProc(run, state, port, env={"TRAINNET_TEST_CRASH": "checkpoint_written:1"})
    try:
        srv.wait_ready()
        c = Client(srv.url, tmp_path / "key")
        assert c.register().status_code == 200
        t1 = c.lease()["task"]
        r = c.upload(t1, c.train(t1))
        assert r.status_code == 200 and r.json()["accepted"], r.text
        acked.append(t1["task_id"])
        t2 = c.lease()["task"]
        p2 = c.train(t2)
        with pytest.raises(httpx.HTTPError):  # the coordinator dies mid-request: not acknowledged
            c.upload(t2, p2)
        srv.proc.wait(timeout=10)
    finally:
        srv.stop()
    assert rows(state, "SELECT task_id, merged_into FROM updates") == [(t1["task_id"], None)]
    assert rows(state, "SELECT MAX(version) FROM versions") == [(0,)]
    assert {r[0] for r in rows(state, "SELECT task_id FROM leases")} == {t2["task_id"]}
    assert (state / "checkpoints" / "v00000001.safetensors").exists()  # written, never committed: orphan

    # Life 2: the lease survived; re-upload t2 -> merge commits, then die before the reply is sent.
    srv = ServerProc(run, state, port, env={"TRAINNET_TEST_CRASH": "update_committed:1"})
    try:
        srv.wait_ready()
        c = Client(srv.url, tmp_path / "key")
        with pytest.raises(httpx.HTTPError):
            c.upload(t2, p2)
        srv.proc.wait(timeout=10)
    finally:
        srv.stop()
    got = dict(rows(state, "SELECT task_id, merged_into FROM updates"))
    assert got == {t1["task_id"]: 1, t2["task_id"]: 1}
    assert not list((state / "tmp").iterdir())

    # Life 3: the retry of t2 is a replay (already durable); a new update is acked, then SIGKILL at once.
    srv = ServerProc(run, state, port)
    try:
        srv.wait_ready()
        c = Client(srv.url, tmp_path / "key")
        r = c.upload(t2, p2)
        assert r.status_code == 409 and r.json()["error"] == "replay"
        acked.append(t2["task_id"])
        t3 = c.lease()["task"]
        r = c.upload(t3, c.train(t3))
        assert r.status_code == 200 and r.json()["accepted"]
        acked.append(t3["task_id"])
        srv.kill()
    finally:
        srv.stop()
    assert (t3["task_id"], None) in rows(state, "SELECT task_id, merged_into FROM updates")

    # Life 4: finish the run with two clients.
    srv = ServerProc(run, state, port)
    try:
        srv.wait_ready()
        clients = [Client(srv.url, tmp_path / "key"), Client(srv.url, tmp_path / "key2")]
        assert clients[1].register().status_code == 200
        st = clients[0].http.get("/v1/status").json()
        assert st["buffered"] == 1 and st["updates_accepted"] == 3
        for _ in range(20):  # bounded
            progressed = False
            for c in clients:
                lease = c.lease()
                if lease["task"] is None:
                    continue
                r = c.upload(lease["task"], c.train(lease["task"]))
                assert r.status_code == 200, r.text
                acked.append(lease["task"]["task_id"])
                progressed = True
            if not progressed:
                break
        st = clients[0].http.get("/v1/status").json()
        assert st["done"] and st["tokens"] == 2560
        final = st_load(clients[0].http.get("/v1/model/latest").content)
        version = st["model_version"]
    finally:
        srv.stop()

    ups = rows(state, "SELECT task_id, merged_into FROM updates ORDER BY seq")
    assert [u[0] for u in ups] == acked  # every acked update, once, in order
    assert len(set(acked)) == len(acked) == 8
    assert all(u[1] is not None and u[1] > 0 for u in ups)
    assert version == 4
    cfg = load_config(run)
    torch.manual_seed(0)
    expected = replay_final_params(run, state)
    assert torch.equal(flatten(final, params_of(GPT(cfg.model))), expected)
