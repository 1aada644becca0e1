"""A virtual worker's protocol side: real keys, real signed requests, through the same Api the HTTP server uses.

    node = SimNode.make(idx, rng)                      # ed25519 key from a seeded generator, node id
    node.register(api, now); reply = node.lease(api, now)
    reply = node.upload(api, task, body, now)          # signed like a real worker (update sig + request sig)
    node.reveal(api, task_id, residual_body, now)

Only the socket is missing: every request is built exactly as worker/client.py builds it (protocol 2: run id,
counter, body sha256 header) and checked by the service's Authenticator, so a simulated run exercises request
authentication, replay checks, rate limits, audits and persistence of the server that ships.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trainnet.protocol import auth
from trainnet.protocol.wire import header_sha256
from trainnet.server.api import Api
from trainnet.server.limits import ApiError


def _key(rng: random.Random) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(rng.getrandbits(256).to_bytes(32, "little"))


@dataclass
class SimNode:
    idx: int
    key: Ed25519PrivateKey
    node_id: str
    public_key: str
    counter: auth.Counter = field(default_factory=auth.Counter)

    @classmethod
    def make(cls, idx: int, rng: random.Random) -> SimNode:
        key = _key(rng)
        pub = auth.public_key_hex(key)
        return cls(idx, key, auth.node_id_of(bytes.fromhex(pub)), pub)

    def _headers(self, api: Api, method: str, path: str, body: bytes, now: float) -> dict[str, str]:
        return auth.sign_request(self.key, self.node_id, api.svc.ccfg.run_id, method, path, body, now,
                                 self.counter.next(now))

    def call(self, api: Api, path: str, payload: dict[str, Any], now: float, handler: Any) -> dict[str, Any]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        caller = api.auth.caller(self._headers(api, "POST", path, body, now), "POST", path, now)
        api.auth.check_body(caller, body)
        return handler(caller, body, now)

    def register(self, api: Api, now: float, info: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"public_key": self.public_key, "info": info or {"device": "sim"}}).encode()
        out = api.register(self._headers(api, "POST", "/v1/register", body, now), body, "sim", now)
        self.counter.bump(out["min_counter"])
        return out

    def lease(self, api: Api, now: float) -> dict[str, Any]:
        return self.call(api, "/v1/lease", {}, now, api.lease)

    def upload(self, api: Api, task: dict[str, Any], body: bytes, now: float) -> dict[str, Any]:
        """Deliver an encoded update the way the filesystem backend takes it (direct POST)."""
        task_id = task["task_id"]
        path = f"/v1/update/{task_id}"
        caller = api.auth.caller(self._headers(api, "POST", path, body, now), "POST", path, now)
        sha = hashlib.sha256(body).hexdigest()
        sig = auth.sign_update(self.key, api.svc.ccfg.run_id, self.node_id, task_id, task["base_version"], sha,
                               header_sha256(body))
        ticket = api.uploads.begin(caller, task_id, len(body), now)
        size, got = api.svc.blobs.put_stream(ticket.key, [body], ticket.max_bytes)
        return api.uploads.finish(caller, ticket, size, got, sig, now)

    def reveal(self, api: Api, task_id: str, body: bytes, now: float) -> dict[str, Any]:
        path = f"/v1/audit/{task_id}/residuals"
        caller = api.auth.caller(self._headers(api, "POST", path, body, now), "POST", path, now)
        api.auth.check_body(caller, body)
        return api.audits.reveal(caller, task_id, body, now)


def refused(exc: ApiError) -> dict[str, Any]:
    """An error reply as the worker sees it."""
    return {"accepted": False, "reason": exc.code, "status": exc.status, **exc.extra}
