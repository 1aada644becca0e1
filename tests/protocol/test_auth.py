"""Tests for trainnet.protocol.auth: key files, node ids, request and update signatures."""

from __future__ import annotations

import hashlib
import os
import stat

from trainnet.protocol.auth import (
    HDR_NODE,
    HDR_SIG,
    HDR_TIME,
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
    h = sign_request(key, nid, "POST", "/v1/heartbeat", body, now=1000.0)
    assert set(h) == {HDR_NODE, HDR_TIME, HDR_SIG}
    assert verify_request(pub, h, "POST", "/v1/heartbeat", body, now=1000.0) is None
    # Lower-case header names (as ASGI servers deliver them) work too.
    low = {k.lower(): v for k, v in h.items()}
    assert verify_request(pub, low, "POST", "/v1/heartbeat", body, now=1100.0) is None
    assert verify_request(pub, h, "POST", "/v1/heartbeat", body + b" ", now=1000.0) == "bad_signature"
    assert verify_request(pub, h, "POST", "/v1/lease", body, now=1000.0) == "bad_signature"
    assert verify_request(pub, h, "GET", "/v1/heartbeat", body, now=1000.0) == "bad_signature"
    assert verify_request(pub, h, "POST", "/v1/heartbeat", body, now=1301.0) == "stale_timestamp"
    assert verify_request(pub, h, "POST", "/v1/heartbeat", body, now=699.0) == "stale_timestamp"
    # Changing the time header breaks the signature.
    bad = dict(h, **{HDR_TIME: "1000.5"})
    assert verify_request(pub, bad, "POST", "/v1/heartbeat", body, now=1000.0) == "bad_signature"
    # Another key, or a node id that is not the key's, fails.
    other = load_or_create_key(tmp_path / "o")
    assert verify_request(public_key_hex(other), h, "POST", "/v1/heartbeat", body, 1000.0) == "bad_signature"
    wrong = dict(h, **{HDR_NODE: "n0000000000000000"})
    assert verify_request(pub, wrong, "POST", "/v1/heartbeat", body, now=1000.0) == "bad_signature"


def test_request_garbage_headers(tmp_path):
    key = load_or_create_key(tmp_path)
    pub = public_key_hex(key)
    nid = node_id_of(bytes.fromhex(pub))
    for h in ({}, {HDR_NODE: nid}, {HDR_NODE: nid, HDR_TIME: "nan", HDR_SIG: "00" * 64},
              {HDR_NODE: nid, HDR_TIME: "1000", HDR_SIG: "zz"},
              {HDR_NODE: nid, HDR_TIME: "inf", HDR_SIG: "00" * 64}):
        assert verify_request(pub, h, "POST", "/v1/lease", b"{}", now=1000.0) == "bad_signature"
    h = sign_request(key, nid, "POST", "/v1/lease", b"{}", now=1000.0)
    assert verify_request("zz", h, "POST", "/v1/lease", b"{}", now=1000.0) == "bad_signature"
    assert verify_request("00" * 16, h, "POST", "/v1/lease", b"{}", now=1000.0) == "bad_signature"


def test_update_signature(tmp_path):
    key = load_or_create_key(tmp_path)
    pub = public_key_hex(key)
    nid = node_id_of(bytes.fromhex(pub))
    digest = hashlib.sha256(b"payload").hexdigest()
    sig = sign_update(key, "run", nid, "t0000003", 7, digest)
    assert verify_update(pub, sig, "run", nid, "t0000003", 7, digest)
    assert not verify_update(pub, sig, "run", nid, "t0000003", 8, digest)
    assert not verify_update(pub, sig, "run2", nid, "t0000003", 7, digest)
    assert not verify_update(pub, sig, "run", nid, "t0000004", 7, digest)
    assert not verify_update(pub, sig, "run", nid, "t0000003", 7, hashlib.sha256(b"x").hexdigest())
    assert not verify_update(pub, "00" * 64, "run", nid, "t0000003", 7, digest)
    assert not verify_update(pub, "nothex", "run", nid, "t0000003", 7, digest)
