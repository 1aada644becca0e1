"""Request authentication under attack (issue 10): replays, other runs' signatures, stale clocks, body hashes,
forged keys and ids, Sybil registration. In-process against the real handlers (server/api.py, auth.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_helpers import CLIENT, Harness, refusal, server_limits  # noqa: E402

from trainnet.protocol import auth  # noqa: E402
from trainnet.protocol.auth import solve_pow  # noqa: E402


@pytest.fixture(scope="module")
def h() -> Harness:
    return Harness.open()


def test_replayed_lease_is_refused_and_grants_nothing(h: Harness) -> None:
    n = h.node()
    body = b"{}"
    captured = h.headers(n, "POST", "/v1/lease", body)
    caller = h.api.auth.caller(captured, "POST", "/v1/lease", h.clock.now)
    first = h.api.lease(caller, body, h.clock.now)
    assert first["task"] is not None
    h.clock.now += 1.0  # well within the 300 s timestamp window
    h.post(n, "/v1/abandon", {"task_id": first["task"]["task_id"]}, h.api.abandon)
    before = h.stored()
    err = refusal(lambda: h.api.auth.caller(captured, "POST", "/v1/lease", h.clock.now))
    assert (err.status, err.code) == (401, "replay")
    assert err.extra["min_counter"] > int(captured[auth.HDR_COUNTER])
    assert h.stored() == before


def test_request_signed_for_another_run_is_refused(h: Harness) -> None:
    n = h.node()
    other = h.headers(n, "POST", "/v1/lease", b"{}", run_id="another-run")
    before = h.stored()
    err = refusal(lambda: h.api.auth.caller(other, "POST", "/v1/lease", h.clock.now))
    assert (err.status, err.code) == (401, "bad_signature")
    assert h.stored() == before
    # ...and a signature for one path does not open another
    sig = h.headers(n, "POST", "/v1/heartbeat", b"{}")
    assert refusal(lambda: h.api.auth.caller(sig, "POST", "/v1/lease", h.clock.now)).code == "bad_signature"


def test_stale_timestamp_and_wrong_key_and_missing_headers(h: Harness) -> None:
    n, mallory = h.node(), h.new_node()
    stale = h.headers(n, "POST", "/v1/lease", b"{}", now=h.clock.now - 301.0)
    assert refusal(lambda: h.api.auth.caller(stale, "POST", "/v1/lease", h.clock.now)).code == "stale_timestamp"
    forged = h.headers(n, "POST", "/v1/lease", b"{}", key=mallory.key)  # n's id, mallory's signature
    err = refusal(lambda: h.api.auth.caller(forged, "POST", "/v1/lease", h.clock.now))
    assert (err.status, err.code) == (401, "bad_signature")
    for drop in (auth.HDR_SIG, auth.HDR_BODY, auth.HDR_COUNTER, auth.HDR_NODE, auth.HDR_TIME):
        partial = {k: v for k, v in h.headers(n, "POST", "/v1/lease", b"{}").items() if k != drop}
        assert refusal(lambda p=partial: h.api.auth.caller(p, "POST", "/v1/lease", h.clock.now)).status == 401
    unknown = h.headers(mallory, "POST", "/v1/lease", b"{}")
    err = refusal(lambda: h.api.auth.caller(unknown, "POST", "/v1/lease", h.clock.now))
    assert (err.status, err.code) == (404, "unknown_node")


def test_body_that_does_not_hash_to_the_signed_digest_is_refused(h: Harness) -> None:
    n = h.node()
    signed_for = json.dumps({"task_id": "t0000000"}).encode()
    hdrs = h.headers(n, "POST", "/v1/abandon", signed_for)
    before = h.stored()
    err = refusal(lambda: h.post(n, "/v1/abandon", {"task_id": "t0000001"}, h.api.abandon, headers=hdrs))
    assert (err.status, err.code) == (400, "body_mismatch")
    assert h.stored() == before


@pytest.mark.parametrize("node_id", ["../../escape/pwned", "n" * 65, "n\x00", "ñ" * 10])
def test_node_ids_off_the_pattern_never_reach_the_engine(h: Harness, node_id: str) -> None:
    n = h.new_node()
    hdrs = h.headers(n, "POST", "/v1/lease", b"{}") | {auth.HDR_NODE: node_id}
    err = refusal(lambda: h.api.auth.caller(hdrs, "POST", "/v1/lease", h.clock.now))
    assert err.status in (401, 404) and err.code in ("bad_signature", "unknown_node")
    assert node_id not in h.core.nodes


def test_registration_signed_by_another_key_is_refused(h: Harness) -> None:
    victim, mallory = h.new_node(), h.new_node()
    nodes = len(h.core.nodes)
    err = refusal(lambda: h.register(victim, key=mallory.key))
    assert (err.status, err.code) == (401, "bad_signature")
    # mallory's own id in the header with the victim's public key in the body: refused too
    body = json.dumps({"public_key": victim.public_key}).encode()
    hdrs = auth.sign_request(mallory.key, mallory.node_id, h.run_id, "POST", "/v1/register", body, h.clock.now,
                             mallory.counter.next(h.clock.now))
    assert refusal(lambda: h.api.register(hdrs, body, CLIENT, h.clock.now)).code == "bad_signature"
    assert len(h.core.nodes) == nodes and victim.node_id not in h.core.nodes


def test_two_thousand_identities_from_one_address_are_capped() -> None:
    h = Harness.open(limits=server_limits(register_per_ip_per_min=30.0))
    t0 = time.perf_counter()
    codes = {}
    for _ in range(2000):
        try:
            h.node(client="198.51.100.9")
            codes["ok"] = codes.get("ok", 0) + 1
        except Exception as exc:  # ApiError
            codes[exc.code] = codes.get(exc.code, 0) + 1
    dt = time.perf_counter() - t0
    assert codes == {"ok": 30, "rate_limited": 1970}
    assert len(h.core.nodes) == 30
    assert dt < 20.0  # each refusal costs a signature check, no store write
    h.clock.now += 60.0  # the budget refills: 30 more a minute
    h.node(client="198.51.100.9")
    h.node(client="192.0.2.1")  # other addresses are not affected


def test_join_token_quota_and_ban_revokes_the_token() -> None:
    h = Harness.open(limits=server_limits(join_token="shared-secret", join_token_max_keys=2))
    assert refusal(lambda: h.node()).code == "bad_join_token"
    assert refusal(lambda: h.node(join_token="wrong")).code == "bad_join_token"
    h.node(join_token="shared-secret")
    h.node(join_token="shared-secret")
    err = refusal(lambda: h.node(join_token="shared-secret"))
    assert (err.status, err.code) == (403, "token_quota")
    issued = h.api.issue_token(max_keys=5, label="alice")
    a = h.node(join_token=issued["token"])
    h.svc.step(lambda c: c.ban(a.node_id, "test ban", h.clock.now))
    err = refusal(lambda: h.node(join_token=issued["token"]))
    assert (err.status, err.code) == (403, "token_revoked")
    assert refusal(lambda: h.register(a, join_token=issued["token"])).code == "banned"


def test_a_ban_never_closes_the_shared_join_token() -> None:
    """One cheater who joined with the run's --join-token must not lock every newcomer out."""
    h = Harness.open(limits=server_limits(join_token="shared-secret", join_token_max_keys=10))
    cheat, honest = h.node(join_token="shared-secret"), h.node(join_token="shared-secret")
    h.svc.step(lambda c: c.ban(cheat.node_id, "test ban", h.clock.now))
    assert refusal(lambda: h.register(cheat, join_token="shared-secret")).code == "banned"
    h.register(honest, join_token="shared-secret")
    newcomer = h.node(join_token="shared-secret")
    assert newcomer.node_id in h.core.nodes and not h.core.nodes[honest.node_id].banned
    assert h.core.tokens["shared"].revoked == ""


def test_proof_of_work_is_required_when_configured() -> None:
    h = Harness.open(limits=server_limits(register_pow_bits=8))
    n = h.new_node()
    err = refusal(lambda: h.register(n))
    assert (err.status, err.code) == (403, "proof_of_work") and err.extra["pow_bits"] == 8
    assert refusal(lambda: h.register(n, pow="not-a-solution")).code == "proof_of_work"
    h.register(n, pow=solve_pow(h.run_id, n.public_key, 8))
    assert n.node_id in h.core.nodes


def test_identities_from_one_ipv6_subnet_share_one_budget() -> None:
    """A subscriber's /64 holds 2^64 addresses: counted per address, the registration limit would not bind."""
    h = Harness.open(limits=server_limits(register_per_ip_per_min=30.0))
    codes = {}
    for i in range(100):
        try:
            h.node(client=f"2001:db8:0:7::{i + 1:x}")
            codes["ok"] = codes.get("ok", 0) + 1
        except Exception as exc:  # ApiError
            codes[exc.code] = codes.get(exc.code, 0) + 1
    assert codes == {"ok": 30, "rate_limited": 70}
    h.node(client="2001:db8:0:8::1")  # the next /64 has its own budget
    h.node(client="::ffff:198.51.100.20")  # an IPv4-mapped address counts as its IPv4 address
