"""Designated verifier nodes (ServerLimits.verifiers = "nodes") through a real coordinator on 127.0.0.1:
honest audits are decided by a `trainnet verifier` process and pass, with nothing recomputed by the
coordinator; a forged update is failed by the verifier node and its worker banned; the claim / material /
verdict endpoints refuse strangers, unclaimed tasks and bad bodies with clear codes and change nothing;
a claim that lapses (its verifier died) is claimed and decided by another verifier."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import SRC, ServerProc, free_port, make_run
from safetensors.torch import load as st_load
from verify_helpers import VERIFY_SETS, Node, VerifyServer, node_row, status, wait_for

from trainnet.coordinator.limits import ServerLimits
from trainnet.coordinator.service import CoordinatorService
from trainnet.protocol.auth import load_or_create_key, node_id_of, public_key_hex, sign_request
from trainnet.worker.verifier import VERDICT_LOG, VerifierNode, VerifierOptions, wire_detail

pytestmark = pytest.mark.timeout(150)


def audit_rows(state: Path) -> list[tuple[str, str, dict]]:
    db = sqlite3.connect(state / "coordinator.db")
    try:
        got = db.execute("SELECT task_id, status, detail FROM audits ORDER BY accepted_at").fetchall()
    finally:
        db.close()
    return [(t, s, json.loads(d) if d else {}) for t, s, d in got]


def verifier_key(key_dir: Path) -> tuple[str, str]:
    """(public key hex, node id) of the key a verifier node will load from key_dir."""
    pub = public_key_hex(load_or_create_key(key_dir))
    return pub, node_id_of(bytes.fromhex(pub))


@pytest.fixture
def server(tmp_path):
    """Start a verify_rate 1.0, q2 server whose audits go to the given verifier keys; stopped after the test."""
    made: list[ServerProc] = []

    def start(keys: list[str], claim_s: float = 0.0, cli: bool = False) -> ServerProc:
        """With `cli`, through `trainnet coordinator --verifiers nodes --verifier-keys FILE` instead."""
        run, state, port = make_run(tmp_path, tokens=100_000), tmp_path / "state", free_port()
        if cli:
            (tmp_path / "verifiers.txt").write_text("# designated verifiers\n" + "\n".join(keys) + "\n")
            sets = [a for s in VERIFY_SETS for a in ("--set", s)]
            srv = ServerProc(run, state, port, extra=[*sets, "--verifiers", "nodes", "--verifier-keys",
                                                      str(tmp_path / "verifiers.txt"), "--rate", "0"])
        else:
            srv = VerifyServer(run, state, port, sets=VERIFY_SETS,
                               limits={"verifiers": "nodes", "verifier_keys": keys, "audit_claim_s": claim_s})
        made.append(srv)
        srv.wait_ready()
        return srv

    yield start
    for srv in made:
        srv.stop()


@pytest.fixture
def verifier_proc(tmp_path):
    """`trainnet verifier` subprocesses (CLI), stopped after the test."""
    procs: list[subprocess.Popen] = []

    def start(url: str, state: Path, max_audits: int) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
        log = open(state.parent / f"{state.name}.log", "ab")
        p = subprocess.Popen([sys.executable, "-m", "trainnet.cli", "verifier", "--coordinator", url, "--state",
                              str(state), "--max-audits", str(max_audits), "--threads", "1", "--retry-budget", "30",
                              "--log-level", "warning"], env=env, stdout=log, stderr=log)
        log.close()
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def honest_task(node: Node) -> dict:
    task = node.lease()
    body, r_in, r_out = node.encode(task, node.train(task))
    assert node.upload(task, body)["accepted"]
    node.reveal(task, r_in, r_out)
    return task


def verdicts(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / VERDICT_LOG).read_text().splitlines()]


def test_verifier_node_decides_every_honest_audit(server, verifier_proc, tmp_path):
    vpub, vid = verifier_key(tmp_path / "v")
    srv = server([vpub])
    vproc = verifier_proc(srv.url, tmp_path / "v", max_audits=3)
    a, b = Node(srv.url, tmp_path / "a"), Node(srv.url, tmp_path / "b")
    a.register()
    b.register()
    tasks = [honest_task(a), honest_task(b), honest_task(a)]
    assert vproc.wait(timeout=90) == 0, (tmp_path / "v.log").read_text()[-2000:]
    st = status(srv.url)
    assert st["audits_passed"] == 3 and st["audits_failed"] == 0 and st["audits_pending"] == 0
    assert not st["nodes_banned"] and st["verification"]["verifiers"] == "nodes"
    # The coordinator recomputed nothing; the verifier node's steps are counted by the spec.
    assert st["verification"]["coordinator_steps"] == 0
    assert st["verification"]["verify_steps"] == sum(t["hparams"]["steps"] for t in tasks)
    rows = audit_rows(tmp_path / "state")
    assert sorted(r[0] for r in rows) == sorted(t["task_id"] for t in tasks)
    assert all(s == "passed" and d["verifier"] == vid and d["reason"] == "ok" for _, s, d in rows), rows
    assert node_row(st, vid)["tasks_leased"] == 0  # registered as a node, never a worker
    recs = verdicts(tmp_path / "v")
    assert [r["passed"] and r["taken"] for r in recs] == [True] * 3
    assert {r["task_id"] for r in recs} == {t["task_id"] for t in tasks}
    a.close()
    b.close()


def test_verifier_node_fails_a_forged_update_and_bans_its_node(server, verifier_proc, tmp_path):
    vpub, vid = verifier_key(tmp_path / "v")
    srv = server([vid], cli=True)  # the CLI's key file; a node id works as well as a public key
    cheat = Node(srv.url, tmp_path / "cheat")
    cheat.register()
    task = cheat.lease()
    torch.manual_seed(1)
    forged = {k: 0.01 * torch.randn_like(v) for k, v in cheat.train(task).items()}  # well-formed, wrong
    body, r_in, r_out = cheat.encode(task, forged)
    assert cheat.upload(task, body)["accepted"]
    cheat.reveal(task, r_in, r_out)
    vproc = verifier_proc(srv.url, tmp_path / "v", max_audits=1)
    assert vproc.wait(timeout=90) == 0, (tmp_path / "v.log").read_text()[-2000:]
    st = status(srv.url)
    row = node_row(st, cheat.node_id)
    assert row["banned"] and row["ban_reason"] == "failed 1 audit(s)" and row["audits_failed"] == 1
    ev = row["evidence"][-1]
    assert ev["task_id"] == task["task_id"] and ev["reason"] == "update_mismatch" and ev["rel_error"] > 0.05
    assert ev["verifier"] == vid and ev["steps"] == task["hparams"]["steps"]
    assert st["buffered"] == 0 and st["tokens"] == 0 and st["verification"]["coordinator_steps"] == 0
    assert audit_rows(tmp_path / "state")[0][1] == "failed"
    rec = verdicts(tmp_path / "v")[0]
    assert rec["passed"] is False and rec["banned"] is True and rec["detail"]["reason"] == "update_mismatch"
    assert cheat.client.lease()["reason"] == "banned"
    cheat.close()


def test_endpoints_refuse_strangers_unclaimed_tasks_and_bad_bodies(server, tmp_path):
    vpub, vid = verifier_key(tmp_path / "v")
    srv = server([vpub])
    v, stranger, w = Node(srv.url, tmp_path / "v"), Node(srv.url, tmp_path / "s"), Node(srv.url, tmp_path / "w")
    for n in (v, stranger, w):
        n.register()
    task = honest_task(w)
    t = task["task_id"]
    claim, verdict, material = "/v1/audit/claim", f"/v1/audit/{t}/verdict", f"/v1/audit/{t}/material"

    def err(r, code_status, code):
        assert r.status_code == code_status and r.json()["error"] == code, (r.status_code, r.text)

    def get(node: Node, path: str):
        return node.http.get(path, headers=sign_request(node.key, node.node_id, "GET", path, b"", time.time()))

    ok = json.dumps({"passed": True, "detail": {"reason": "ok", "rel_error": 0.0}}).encode()
    before = status(srv.url)
    assert before["verification"]["audits_ready"] == 1
    err(stranger.post(claim, b"{}"), 403, "not_verifier")
    err(stranger.post(verdict, ok), 403, "not_verifier")
    err(get(stranger, material), 403, "not_verifier")
    err(v.http.post(claim, content=b"{}"), 401, "bad_signature")  # unsigned
    err(v.post(verdict, ok), 409, "not_claimed")
    err(get(v, material), 409, "not_claimed")
    err(v.post("/v1/audit/t9999999/verdict", ok), 404, "unknown_audit")
    err(v.post("/v1/audit/t%2A1/verdict", ok), 404, "unknown_audit")
    err(v.post(claim, b'{"x": 1}'), 400, "bad_request")
    assert status(srv.url)["verification"]["audits_claimed"] == 0
    offer = v.post(claim, b"{}").json()["audit"]
    assert offer["task_id"] == t and offer["spec"]["node_id"] == w.node_id and offer["codec"] == "q2"
    assert offer["material"] == material and offer["tolerance"] == {"rel_error": 0.05, "min_cosine": 0.99}
    assert offer["ef_out"] != offer["ef_in"] and offer["claim_deadline"] > time.time()
    assert stranger.post(claim, b"{}").status_code == 403
    err(w.post(claim, b"{}"), 403, "not_verifier")  # the audited worker itself
    for bad, code in [(b"not json", "bad_json"), (b'{"passed": "yes"}', "bad_request"), (b"{}", "bad_request"),
                      (b'{"passed": true, "extra": 1}', "bad_request"),
                      (b'{"passed": true, "detail": {"rel_error": "0"}}', "bad_request"),
                      (b'{"passed": true, "detail": {"reason": "update_mismatch"}}', "bad_request"),
                      (b'{"passed": false, "detail": {"reason": "made_up"}}', "bad_request"),
                      (b'{"passed": true, "detail": {"steps": 0}}', "bad_request"),
                      (b'{"passed": true, "detail": {"rel_error": 1e300}}', "bad_request"),
                      (b'{"passed": true, "detail": {"rel_error": NaN}}', "bad_json"),
                      (json.dumps({"passed": True, "detail": {f"k{i}": i for i in range(17)}}).encode(), "bad_request"),
                      (b'{"passed": true, "detail": [1]}', "bad_request")]:
        err(v.post(verdict, bad), 400, code)
    err(stranger.post(verdict, ok), 403, "not_verifier")
    after = status(srv.url)
    for k in ("audits_pending", "audits_passed", "audits_failed", "nodes_banned"):
        assert after[k] == before[k], k
    assert after["verification"]["audits_claimed"] == 1 and audit_rows(tmp_path / "state")[0][1] == "pending"
    # The claimant gets the material: the decoded update and the revealed residuals, named by parameter.
    r = get(v, material)
    assert r.status_code == 200, r.text
    tensors = st_load(r.content)
    params = {k for k in tensors if k.startswith("update/")}
    assert params and {k.partition("/")[2] for k in params} == {k for k, _ in w.model.named_parameters()}
    assert any(k.startswith("r_out/") for k in tensors)
    # A verdict is taken once, from the claimant; it names the verifier.
    assert v.post(verdict, ok).json() == {"ok": True, "task_id": t, "passed": True, "banned": False}
    err(v.post(verdict, ok), 404, "unknown_audit")
    st = status(srv.url)
    assert st["audits_passed"] == 1 and st["audits_pending"] == 0 and st["verification"]["audits_claimed"] == 0
    assert audit_rows(tmp_path / "state")[0][2]["verifier"] == vid
    assert v.post(claim, b"{}").json() == {"audit": None, "reason": "none_ready", "retry_after_s": 2.0}
    for n in (v, stranger, w):
        n.close()


def test_lapsed_claim_is_claimed_again_by_another_verifier(server, tmp_path):
    (apub, _), (bpub, bid) = verifier_key(tmp_path / "va"), verifier_key(tmp_path / "vb")
    srv = server([apub, bpub], claim_s=3.0)
    dead, w = Node(srv.url, tmp_path / "va"), Node(srv.url, tmp_path / "w")
    dead.register()
    w.register()
    task = honest_task(w)
    t = task["task_id"]
    assert dead.post("/v1/audit/claim", b"{}").json()["audit"]["task_id"] == t  # ... and then it dies
    b = VerifierNode(VerifierOptions(srv.url, tmp_path / "vb", threads=1, retry_budget_s=20))
    wait = b.step()
    assert isinstance(wait, float) and 0 < wait <= 3.0  # held by a live claim: nothing to hand out
    assert status(srv.url)["verification"]["audits_claimed"] == 1
    wait_for(lambda: status(srv.url)["verification"]["audits_claimed"] == 0, 10, "the claim to lapse")
    r = dead.post(f"/v1/audit/{t}/verdict", json.dumps({"passed": False}).encode())
    assert r.status_code == 409 and r.json()["error"] == "claim_expired", r.text
    rec = b.step()
    assert isinstance(rec, dict) and rec["task_id"] == t and rec["passed"] and rec["taken"], rec
    r = dead.post(f"/v1/audit/{t}/verdict", json.dumps({"passed": False}).encode())
    assert r.status_code == 404 and r.json()["error"] == "unknown_audit"
    st = status(srv.url)
    assert st["audits_passed"] == 1 and st["audits_failed"] == 0 and not st["nodes_banned"]
    assert audit_rows(tmp_path / "state")[0][2]["verifier"] == bid
    b.client.close()
    dead.close()
    w.close()


def test_verifier_settings_are_checked_and_details_kept_small():
    check = CoordinatorService._verifier_keys
    assert check(ServerLimits(verifiers="nodes", verifier_keys=(" AB ",))) == frozenset({"ab"})
    assert check(ServerLimits()) == frozenset()
    for bad in (ServerLimits(verifiers="nodes"), ServerLimits(verifiers="anyone"),
                ServerLimits(verifier_keys=("ab",))):
        with pytest.raises(ValueError):
            check(bad)
    d = {"steps": 5, "codec": "q2", "reason": "update_mismatch", "rel_error": float("inf"), "cosine": 0.5,
         "which": "ef_in", "flag": True}
    assert wire_detail(d) == {"reason": "update_mismatch", "cosine": 0.5, "which": "ef_in"}
