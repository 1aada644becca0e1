"""Who is calling, decided from the headers alone, before a byte of the body is read.

    auth = Authenticator(svc)
    caller = auth.caller(headers, "POST", "/v1/lease", now)     # ApiError 401/403/404/429 otherwise
    auth.check_body(caller, body)                               # the body hashes to the signed sha256
    auth.ip(client_address, now)                                # per-address limit for unsigned requests

A signed request (protocol 2) carries the node id, a timestamp, a per-key counter and the body's sha256 in
headers, and its signature covers the run id. So a request is checked for the right key, the right run, a
fresh timestamp and a counter above every counter this node used before (a replay, or a request signed for
another run, is refused with a reason code) — and only then is its body read. Counters are claimed under the
service lock, atomically, so two copies of one request cannot both pass. After a coordinator restart every
node's floor is the restart time in microseconds: nothing signed before it replays.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass

from trainnet.protocol.auth import SignedRequest, parse_signed, verify_request
from trainnet.server.limits import ApiError, RateLimiter
from trainnet.server.service import Service


def address_key(address: str) -> str:
    """What per-address limits count by: an IPv4 address, or the /64 an IPv6 address is in (one subscriber
    gets a whole /64, so counting single IPv6 addresses would let one machine register without bound)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True)
class Caller:
    node_id: str
    public_key: str
    req: SignedRequest
    banned: bool


class Authenticator:
    def __init__(self, svc: Service) -> None:
        self.svc = svc
        lim = svc.limits
        self.node_rate = RateLimiter(lim.rate_per_s, lim.burst)
        self.ip_rate = RateLimiter(lim.ip_rate_per_s, lim.ip_burst)
        per_min = lim.register_per_ip_per_min
        self.register_rate = RateLimiter(per_min / 60.0 if per_min > 0 else 0.0, max(1.0, per_min))

    @staticmethod
    def _limited(bucket: RateLimiter, key: str, now: float, what: str) -> None:
        wait = bucket.take(key, now)
        if wait > 0:
            raise ApiError(429, "rate_limited", f"too many {what}",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def ip(self, address: str, now: float) -> None:
        self._limited(self.ip_rate, "ip:" + address_key(address), now, "requests from this address")

    def registration(self, address: str, now: float) -> None:
        self._limited(self.register_rate, "reg:" + address_key(address), now, "new identities from this address")

    def caller(self, headers: Mapping[str, str], method: str, path: str, now: float) -> Caller:
        parsed = parse_signed(headers)
        if parsed is None:
            raise ApiError(401, "bad_signature", "missing or malformed signing headers (docs/PROTOCOL.md)")
        svc = self.svc
        with svc.lock:
            node = svc.core.nodes.get(parsed.node_id)
            pub = node.public_key if node is not None else None
        if pub is None:
            raise ApiError(404, "unknown_node", "register first")
        err, req = verify_request(pub, headers, svc.ccfg.run_id, method, path, now, svc.limits.max_skew_s)
        if err:
            raise ApiError(401, err, "request signature check failed (wrong key, run or clock)")
        self._limited(self.node_rate, "node:" + req.node_id, now, "requests from this node")
        with svc.lock:  # claim the counter atomically: one of two identical requests wins
            node = svc.core.nodes[req.node_id]
            floor = node.counter
            if req.counter <= floor:
                raise ApiError(401, "replay", "this request's counter was already used (a replay, or a clock "
                                              "behind the coordinator's restart)", extra={"min_counter": floor + 1})
            svc.core.seen(req.node_id, req.counter, now)
            banned = node.banned
        return Caller(req.node_id, pub, req, banned)

    @staticmethod
    def check_body(caller: Caller, body: bytes) -> None:
        if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), caller.req.body_sha256):
            raise ApiError(400, "body_mismatch", "the body does not hash to the signed X-TrainNet-Body-SHA256")

    @staticmethod
    def not_banned(caller: Caller, reason: str = "") -> None:
        if caller.banned:
            raise ApiError(403, "banned", f"node is banned{': ' + reason if reason else ''}")
