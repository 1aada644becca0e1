"""The HTTP shell's order of work, in-process over ASGI (no socket): the signature and the cheap checks come
before the body, byte caps derive from the model, and the public views publish aggregates only.

Each hostile body below is an async generator that counts what the app pulls from it: a request refused before
its body is read pulls nothing (issue 10: 8 unauthenticated 60 MiB POSTs grew the coordinator by 850 MB)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_helpers import Clock, Harness, server_limits  # noqa: E402

from trainnet.server.app import create_app  # noqa: E402

MIB = 1 << 20
TOKEN = "operator-secret-for-tests"


class Counted:
    """A request body of `total` bytes that counts how many the app actually pulled."""

    def __init__(self, total: int, piece: int = 64 * 1024) -> None:
        self.total, self.piece, self.pulled = total, piece, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.total:
            n = min(self.piece, self.total - sent)
            self.pulled += n
            sent += n
            yield b"\0" * n


@pytest.fixture(scope="module")
def h() -> Harness:
    return Harness.open(clock=Clock(time.time()), limits=server_limits(operator_token=TOKEN))


def request(h: Harness, method: str, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(h.rt), client=("192.0.2.10", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://coordinator") as client:
            return await client.request(method, path, **kw)
    return asyncio.run(go())


def signed(h: Harness, n: Any, method: str, path: str, body: bytes, **lie: Any) -> dict[str, str]:
    h.clock.now = time.time()
    return h.headers(n, method, path, body, **lie)


@pytest.mark.parametrize("path", ["/v1/lease", "/v1/heartbeat", "/v1/update/t0000000", "/v1/update/t0000000/commit",
                                  "/v1/audit/t0000000/residuals", "/v1/audit/claim", "/v1/audit/t0000000/verdict",
                                  "/v1/register", "/v1/operator/tokens"])
def test_unauthenticated_60_mib_post_is_refused_before_its_body(h: Harness, path: str) -> None:
    body = Counted(60 * MIB)
    r = request(h, "POST", path, content=body, headers={"Content-Length": str(60 * MIB)})
    assert r.status_code in (401, 413), (path, r.status_code, r.text)
    assert r.json()["error"] in ("bad_signature", "payload_too_large", "operator_only")
    assert body.pulled <= 64 * 1024, (path, body.pulled)  # at most the transport's first piece


def test_signed_but_oversized_bodies_are_refused_by_model_derived_caps(h: Harness) -> None:
    n = h.node()
    task = h.lease(n)
    path = f"/v1/update/{task['task_id']}"
    cap = h.api.uploads.max_bytes(task["codec"])
    blobs = sorted(h.svc.blobs.list())
    # Content-Length over the cap: refused before a byte
    body = Counted(cap + 1)
    r = request(h, "POST", path, content=body, headers=signed(h, n, "POST", path, b"x") | {
        "Content-Length": str(cap + 1)})
    assert (r.status_code, r.json()["error"]) == (413, "payload_too_large") and body.pulled <= 64 * 1024
    # chunked (no Content-Length): cut at the cap, nothing kept
    body = Counted(8 * MIB)
    r = request(h, "POST", path, content=body, headers=signed(h, n, "POST", path, b"x"))
    assert (r.status_code, r.json()["error"]) == (413, "payload_too_large")
    assert body.pulled <= cap + 2 * 64 * 1024
    assert sorted(h.svc.blobs.list()) == blobs
    # a JSON endpoint: 16 KiB
    big = json.dumps({"task_id": "x" * (32 * 1024)}).encode()
    r = request(h, "POST", "/v1/heartbeat", content=big, headers=signed(h, n, "POST", "/v1/heartbeat", big))
    assert (r.status_code, r.json()["error"]) == (413, "payload_too_large")


def test_reveal_larger_than_the_model_derived_cap_is_refused_before_its_body(h: Harness) -> None:
    n = h.node()
    task = h.lease(n)
    h.clock.now = time.time()
    assert h.upload(n, task, h.honest_update(n, task))["audit"]["reveal"]
    path = f"/v1/audit/{task['task_id']}/residuals"
    cap = h.api.audits.reveal_cap
    assert cap < 8 * 21_600 + 64 * 1024  # 2 x float32 x the model's parameters + headers
    body = Counted(cap + 1)
    r = request(h, "POST", path, content=body, headers=signed(h, n, "POST", path, b"x") | {
        "Content-Length": str(cap + 1)})
    assert (r.status_code, r.json()["error"]) == (413, "payload_too_large") and body.pulled <= 64 * 1024
    assert task["task_id"] in h.core.audits and h.core.audits[task["task_id"]].residual_blob is None


def test_body_hash_mismatch_and_replay_over_http(h: Harness) -> None:
    n = h.node()
    hdrs = signed(h, n, "POST", "/v1/lease", b"{}")
    r = request(h, "POST", "/v1/lease", content=b'{"x":1}', headers=hdrs)
    assert (r.status_code, r.json()["error"]) == (400, "body_mismatch")
    r = request(h, "POST", "/v1/lease", content=b"{}", headers=hdrs)  # the same signed request again
    assert (r.status_code, r.json()["error"]) == (401, "replay")
    other = signed(h, n, "POST", "/v1/lease", b"{}", run_id="another-run")
    r = request(h, "POST", "/v1/lease", content=b"{}", headers=other)
    assert (r.status_code, r.json()["error"]) == (401, "bad_signature")


def _metrics(h: Harness, **kw: Any) -> str:
    r = request(h, "GET", "/metrics", **kw)
    assert r.status_code == 200
    return r.text


def test_public_views_carry_aggregates_only_and_the_operator_view_needs_the_token(h: Harness) -> None:
    nodes = [h.node() for _ in range(3)]
    public_before = _metrics(h)
    nodes += [h.node() for _ in range(20)]
    for n in nodes[:2]:
        h.lease(n)
    status = request(h, "GET", "/v1/status")
    assert status.status_code == 200
    text = status.text + _metrics(h)
    assert not any(n.node_id in text for n in nodes)  # no node id in anything public
    assert "evidence" not in status.text and "node_table" not in status.text
    # the public metric set does not grow with the swarm
    series = [ln for ln in _metrics(h).splitlines() if ln and not ln.startswith("#")]
    series_before = [ln for ln in public_before.splitlines() if ln and not ln.startswith("#")]
    assert len(series) == len(series_before) and len(series) < 40
    for path in ("/v1/operator/status", "/v1/dashboard"):
        assert request(h, "GET", path).status_code == 401
        assert request(h, "GET", path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    op = request(h, "GET", "/v1/operator/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert op.status_code == 200 and any(n.node_id in op.text for n in nodes)
    assert "operator-secret" not in op.text  # secrets are never echoed
    private = _metrics(h, headers={"Authorization": f"Bearer {TOKEN}"})
    assert nodes[0].node_id in private  # the operator's scrape has the per-node series


def test_the_commit_body_is_strictly_typed(h: Harness) -> None:
    """POST /v1/update/{id}/commit takes exactly the fields a worker signs (worker/session.py), with their JSON
    types: an unknown field, a missing one or a wrong type is a 400 that names it, before any store is read."""
    n = h.node()
    task = h.lease(n)
    path = f"/v1/update/{task['task_id']}/commit"
    good = {"base_version": 0, "sha256": "ab" * 32, "header_sha256": "cd" * 32, "nbytes": 10, "codec": task["codec"],
            "tokens": 160, "steps": 5, "loss": 5.1, "energy_j": 1.5, "energy_measured": False,
            "energy_source": "estimate: tdp", "task_s": 0.2, "ef_in": "00" * 32, "ef_out": "11" * 32}
    blobs = sorted(h.svc.blobs.list())
    for meta, named in [(good | {"blob": "../escape"}, "unknown field(s): blob"),
                        ({k: v for k, v in good.items() if k != "tokens"}, "missing field 'tokens'"),
                        (good | {"nbytes": "10"}, "field 'nbytes' must be int"),
                        (good | {"steps": True}, "field 'steps' must be int"),
                        (good | {"energy_measured": 1}, "field 'energy_measured' must be bool"),
                        (good | {"codec": "q" * 300}, "field 'codec' is longer than 256 characters")]:
        body = json.dumps(meta).encode()
        r = request(h, "POST", path, content=body, headers=signed(h, n, "POST", path, body))
        assert (r.status_code, r.json()["error"]) == (400, "bad_request"), (named, r.text)
        assert named in r.json()["detail"], r.json()
    body = b'{"base_version": 0, "nbytes": NaN}'
    r = request(h, "POST", path, content=body, headers=signed(h, n, "POST", path, body))
    assert (r.status_code, r.json()["error"]) == (400, "bad_json")
    # the well-typed body gets as far as the store: nothing was PUT at the task's key
    body = json.dumps(good).encode()
    r = request(h, "POST", path, content=body, headers=signed(h, n, "POST", path, body))
    assert (r.status_code, r.json()["error"]) == (409, "blob_missing"), r.text
    assert sorted(h.svc.blobs.list()) == blobs and task["task_id"] in h.core.leases
