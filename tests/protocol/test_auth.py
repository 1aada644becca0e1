"""Tests for trainnet.protocol.auth: key files, node ids, request and update signatures."""

from __future__ import annotations

import hashlib
import os
import stat

from trainnet.protocol.auth import (
    HDR_BODY,
    HDR_COUNTER,
    HDR_NODE,
    HDR_SIG,
    HDR_TIME,
    Counter,
    load_or_create_key,
    node_id_of,
    public_key_hex,
    sign_request,
    sign_update,
    verify_request,
    verify_update,
)


def test_key_created_0600_and_reloaded(tmp_path):
    k1 = load_or_create_key(tmp_path / "st")
    path = tmp_path / "st" / "node_key.pem"
    assert path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()
    k2 = load_or_create_key(tmp_path / "st")
    assert public_key_hex(k1) == public_key_hex(k2)
    assert public_key_hex(load_or_create_key(tmp_path / "other")) != public_key_hex(k1)


def test_node_id_format(tmp_path):
    key = load_or_create_key(tmp_path)
    raw = bytes.fromhex(public_key_hex(key))
    nid = node_id_of(raw)
    assert len(raw) == 32
    assert nid == "n" + hashlib.sha256(raw).hexdigest()[:16]
    assert len(nid) == 17


def test_request_roundtrip_and_tamper(tmp_path):
    key = load_or_create_key(tmp_path)
    pub = public_key_hex(key)
    nid = node_id_of(bytes.fromhex(pub))
    body = b'{"task_id": "t0000001"}'
    h = sign_request(key, nid, "run", "POST", "/v1/heartbeat", body, now=1000.0, counter=7)
    assert set(h) == {HDR_NODE, HDR_TIME, HDR_SIG, HDR_COUNTER, HDR_BODY}
    assert h[HDR_BODY] == hashlib.sha256(body).hexdigest()  # the body's hash travels in a header
    err, req = verify_request(pub, h, "run", "POST", "/v1/heartbeat", now=1000.0)
    assert err is None and req.counter == 7 and req.node_id == nid
    # Lower-case header names (as ASGI servers deliver them) work too.
    low = {k.lower(): v for k, v in h.items()}
    assert verify_request(pub, low, "run", "POST", "/v1/heartbeat", now=1100.0)[0] is None
    assert verify_request(pub, h, "other-run", "POST", "/v1/heartbeat", now=1000.0)[0] == "bad_signature"
    assert verify_request(pub, h, "run", "POST", "/v1/lease", now=1000.0)[0] == "bad_signature"
    assert verify_request(pub, h, "run", "GET", "/v1/heartbeat", now=1000.0)[0] == "bad_signature"
    assert verify_request(pub, h, "run", "POST", "/v1/heartbeat", now=1301.0)[0] == "stale_timestamp"
    assert verify_request(pub, h, "run", "POST", "/v1/heartbeat", now=699.0)[0] == "stale_timestamp"
    # Every signed header is covered: time, counter and body hash.
    for name, value in ((HDR_TIME, "1000.5"), (HDR_COUNTER, "8"), (HDR_BODY, hashlib.sha256(b"x").hexdigest())):
        assert verify_request(pub, dict(h, **{name: value}), "run", "POST", "/v1/heartbeat", 1000.0)[0] == \
            "bad_signature", name
    # Another key's signature under this node id is refused.
    other = load_or_create_key(tmp_path / "o")
    forged = sign_request(other, nid, "run", "POST", "/v1/heartbeat", body, now=1000.0, counter=9)
    assert verify_request(pub, forged, "run", "POST", "/v1/heartbeat", now=1000.0)[0] == "bad_signature"


def test_counter_grows_and_bumps():
    c = Counter()
    a, b = c.next(1000.0), c.next(1000.0)
    assert b == a + 1 and a >= 1000 * 10**6
    c.bump(10**18)
    assert c.next(1000.0) == 10**18 + 1


def test_request_garbage_headers(tmp_path):
    key = load_or_create_key(tmp_path)
    pub = public_key_hex(key)
    nid = node_id_of(bytes.fromhex(pub))
    good = sign_request(key, nid, "run", "POST", "/v1/lease", b"{}", now=1000.0, counter=1)
    for change in ({HDR_TIME: "nan"}, {HDR_TIME: "inf"}, {HDR_SIG: "zz"}, {HDR_COUNTER: "-1"},
                   {HDR_COUNTER: "1e9"}, {HDR_BODY: "XY"}, {HDR_NODE: ""}):
        h = dict(good, **change)
        assert verify_request(pub, h, "run", "POST", "/v1/lease", now=1000.0)[0] == "bad_signature", change
    assert verify_request(pub, {}, "run", "POST", "/v1/lease", now=1000.0) == ("bad_signature", None)


def test_update_signature(tmp_path):
    key = load_or_create_key(tmp_path)
    pub = public_key_hex(key)
    nid = node_id_of(bytes.fromhex(pub))
    digest, head = hashlib.sha256(b"payload").hexdigest(), hashlib.sha256(b"header").hexdigest()
    sig = sign_update(key, "run", nid, "t0000003", 7, digest, head)
    assert verify_update(pub, sig, "run", nid, "t0000003", 7, digest, head)
    for args in (("run2", nid, "t0000003", 7, digest, head), ("run", nid, "t0000004", 7, digest, head),
                 ("run", nid, "t0000003", 8, digest, head), ("run", nid, "t0000003", 7, head, head),
                 ("run", nid, "t0000003", 7, digest, digest)):
        assert not verify_update(pub, sig, *args)
    assert not verify_update(pub, "00" * 64, "run", nid, "t0000003", 7, digest, head)
