"""Hostile and broken requests against a real coordinator process: 4xx with a reason code, never 5xx,
the store stays consistent and the server keeps serving."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3

import pytest
import torch
from helpers import HONEST_FP32_COMMITMENTS, Client, ServerProc, free_port, make_run

from trainnet.coordinator.limits import ApiError, RateLimiter, parse_json_object
from trainnet.protocol.auth import sign_request
from trainnet.protocol.wire import encode_update

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    run = make_run(tmp, tokens=100_000)
    (tmp / "allow.txt").write_text("# none yet\n")
    srv = ServerProc(run, tmp / "state", free_port(),
                     extra=["--join-token", "sesame", "--max-update-mb", "0.5", "--rate", "1000", "--burst", "1000"])
    try:
        srv.wait_ready()
        yield srv, tmp
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    srv, tmp = server
    c = Client(srv.url, tmp / "k", join_token="sesame")
    assert c.register().status_code == 200
    yield c
    c.close()


def err(r, status, code):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json()["error"] == code, r.text


def test_register_checks(server):
    srv, tmp = server
    c = Client(srv.url, tmp / "k2")
    err(c.register(), 403, "bad_join_token")
    c.join_token = "wrong"
    err(c.register(), 403, "bad_join_token")
    c.join_token = "sesame"
    body = json.dumps({"public_key": c.pub, "join_token": "sesame"}).encode()
    h = sign_request(c.key, c.node_id, "POST", "/v1/register", body, now=0.0)  # stale clock
    err(c.http.post("/v1/register", content=body, headers=h), 401, "stale_timestamp")
    other = Client(srv.url, tmp / "k3")
    err(c.post("/v1/register", {"public_key": other.pub, "join_token": "sesame"}, node_id=other.node_id),
        401, "bad_signature")
    err(c.post("/v1/register", {"public_key": "zz" * 32}), 400, "bad_request")
    err(c.post("/v1/register", {"public_key": c.pub, "join_token": "sesame", "info": {"x": "y" * 10_000}}),
        400, "bad_request")
    err(c.post("/v1/register", {"public_key": c.pub, "join_token": "sesame", "info": {"a": {"b": 1}}}),
        400, "bad_request")
    assert c.register().status_code == 200


def test_malformed_json_and_types(client):
    c = client
    err(c.post("/v1/lease", b"{not json"), 400, "bad_json")
    err(c.post("/v1/lease", b"[]"), 400, "bad_json")
    err(c.post("/v1/lease", {"extra": "x" * 100}), 400, "bad_request")
    err(c.post("/v1/heartbeat", {"task_id": 5}), 400, "bad_request")
    err(c.post("/v1/heartbeat", {}), 400, "bad_request")
    err(c.post("/v1/heartbeat", b'{"task_id": "a", "task_id": "b"}'), 400, "bad_json")
    err(c.post("/v1/heartbeat", b'{"task_id": NaN}'), 400, "bad_json")
    err(c.post("/v1/heartbeat", {"task_id": "t" * 1000}), 400, "bad_request")
    err(c.post("/v1/heartbeat", b"\xff\xfe"), 400, "bad_json")
    err(c.post("/v1/heartbeat", b"[" * 10_000), 400, "bad_json")  # deep nesting, under the size limit
    err(c.post("/v1/heartbeat", b" " * 20_000), 413, "payload_too_large")


def test_signatures_and_unknown_ids(server, client):
    srv, tmp = server
    c = client
    err(c.http.post("/v1/lease", content=b"{}"), 401, "bad_signature")  # unsigned
    h = sign_request(c.key, c.node_id, "POST", "/v1/lease", b"{}", now=__import__("time").time())
    h["X-TrainNet-Signature"] = "00" * 64
    err(c.http.post("/v1/lease", content=b"{}", headers=h), 401, "bad_signature")
    err(c.post("/v1/lease", {}, node_id="n0123456789abcdef"), 404, "unknown_node")
    err(c.post("/v1/heartbeat", {"task_id": "t9999999"}), 409, "unknown_task")
    err(c.post("/v1/abandon", {"task_id": "t9999999"}), 409, "unknown_task")
    err(c.http.get("/v1/model/999"), 404, "not_found")
    err(c.http.get("/v1/model/-1"), 400, "bad_request")
    err(c.http.get("/v1/model/0?since=77"), 404, "not_found")
    err(c.http.get("/v1/shard/99999"), 404, "not_found")
    err(c.http.get("/v1/shard/abc"), 404, "not_found")
    err(c.http.get("/v1/shard/3"), 404, "not_found")  # validation shard (val_every=4): never served
    err(c.http.get("/v1/nothing"), 404, "not_found")


def test_uploads(server, client):
    srv, tmp = server
    c = client
    task = c.lease()["task"]
    assert task is not None
    hb = c.post("/v1/heartbeat", {"task_id": task["task_id"]})
    assert hb.status_code == 200 and hb.json()["ok"]
    payload = c.train(task)
    # Forged update signature (signed for another base version).
    err(c.upload(task, payload, sig_task=dict(task, base_version=task["base_version"] + 1)), 401, "bad_signature")
    # Missing update signature.
    err(c.post("/v1/update", payload), 401, "bad_signature")
    # Truncated / garbage payloads.
    for bad in (payload[: len(payload) // 2], b"TNUP" + b"\x00" * 20, b""):
        err(c.upload(task, bad), 422, "bad_payload")
    # Oversized body (limit 0.5 MB).
    err(c.upload(task, b"\x00" * (600 << 10)), 413, "payload_too_large")
    # Wrong shapes and NaN, properly encoded and signed.
    delta = {k: torch.zeros(3) for k in ("a", "b")}
    extra = {"tokens": task["tokens"], "steps": task["hparams"]["steps"], "loss": 1.0, **HONEST_FP32_COMMITMENTS}
    kw = dict(run_id=c.info["run_id"], node_id=c.node_id, task_id=task["task_id"],
              base_version=task["base_version"], extra=extra)
    err(c.upload(task, encode_update(delta, codec="fp32", **kw)), 422, "bad_shape")
    good = {k: torch.zeros_like(v) for k, v in c.base_params(0).items()}
    err(c.upload(task, encode_update(good, codec="fp16", **kw)), 422, "bad_payload")  # not the run's codec
    # (NaN/Inf cannot even be encoded: the codecs refuse them, and the decoder re-checks.)
    lie = dict(kw, extra=dict(extra, tokens=extra["tokens"] * 2))
    err(c.upload(task, encode_update({k: torch.zeros_like(v) for k, v in good.items()}, codec="fp32", **lie)),
        422, "token_count_mismatch")
    # The genuine upload is accepted; replaying it is refused; the store holds it once.
    r = c.upload(task, payload)
    assert r.status_code == 200 and r.json()["accepted"], r.text
    err(c.upload(task, payload), 409, "replay")
    err(c.post("/v1/heartbeat", {"task_id": task["task_id"]}), 409, "unknown_task")
    db = sqlite3.connect(tmp / "state" / "coordinator.db")
    try:
        assert db.execute("SELECT COUNT(*) FROM updates WHERE task_id=?", (task["task_id"],)).fetchone()[0] == 1
        (path,) = db.execute("SELECT path FROM updates WHERE task_id=?", (task["task_id"],)).fetchone()
    finally:
        db.close()
    assert hashlib.sha256((tmp / "state" / path).read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert len(list((tmp / "state" / "updates").iterdir())) == 1  # refused uploads left no files
    # Abandon gives the shard back at once: the next lease gets the same shard and seed.
    t2 = c.lease()["task"]
    assert c.post("/v1/abandon", {"task_id": t2["task_id"]}).json() == {"ok": True}
    t3 = c.lease()["task"]
    assert (t3["shard_id"], t3["seed"]) == (t2["shard_id"], t2["seed"]) and t3["task_id"] != t2["task_id"]
    # Still serving.
    st = c.http.get("/v1/status").json()
    assert st["updates_accepted"] == 1 and st["leases_active"] == 1 and st["store"]["updates"] == 1


def test_raw_truncated_request(server, client):
    srv, _ = server
    # Content-Length says 1000 bytes, 10 arrive, then the client hangs up; the server must shrug.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"POST /v1/lease HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        s.recv(100)
    assert client.http.get("/v1/info").status_code == 200


def test_rate_limiter_and_parser_units():
    rl = RateLimiter(rate_per_s=2.0, burst=3)
    assert [rl.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("a", 0.0) == pytest.approx(0.5)
    assert rl.take("b", 0.0) == 0.0
    assert rl.take("a", 0.6) == 0.0
    with pytest.raises(ApiError) as e:
        parse_json_object(b'{"a": true}', {"a": int})
    assert e.value.code == "bad_request"
    assert parse_json_object(b'{"a": 3}', {"a": int}) == {"a": 3}
