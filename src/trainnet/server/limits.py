"""Server limits, per-key token-bucket rate limiting and strict JSON body validation.

    limits = ServerLimits(rate_per_s=20.0, burst=40)
    buckets = RateLimiter(limits.rate_per_s, limits.burst)
    wait = buckets.take("n0123...", now)          # 0.0 if allowed, else seconds until a token frees up
    body = parse_json_object(raw, {"task_id": str}, optional={})   # raises ApiError(400, ...) on anything odd
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ServerLimits:
    """What the HTTP service allows: sizes, rates, timeouts, registration cost, and who sees what.

    Byte caps for updates and residual reveals are derived from the run's model and codec (api.py); the
    values here are upper bounds on top of those."""

    max_update_bytes: int = 1 << 40  # upper bound; the real cap is the exact encoded size for the model + header
    max_json_bytes: int = 16 << 10  # every JSON body
    rate_per_s: float = 20.0  # per node (signed requests); 0 disables
    burst: float = 40.0
    ip_rate_per_s: float = 10.0  # per client address for unauthenticated requests
    ip_burst: float = 40.0
    register_per_ip_per_min: float = 30.0  # new identities from one address (Sybil cost)
    register_pow_bits: int = 0  # proof of work at registration: leading zero bits of sha256 (0: off)
    max_skew_s: float = 300.0
    tick_s: float = 1.0
    max_string: int = 256
    max_info_keys: int = 32
    # HTTP connection hygiene (app.py / server.py): a cap on open connections, header and body read timeouts
    max_connections: int = 512
    max_connections_per_address: int = 256  # 0: no per-address cap (behind a reverse proxy)
    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 << 10  # request line + headers (431 beyond)
    body_timeout_s: float = 120.0
    presign_s: float = 3600.0  # lifetime of presigned upload/download URLs
    keep_versions: int = 16  # published versions kept (besides those open leases and audits need)
    # Verification: who recomputes audits ("coordinator": the built-in loop; "nodes": designated verifier nodes,
    # whose public keys (hex) or node ids are `verifier_keys`, an allow-list trusted like the server).
    verify_budget_s: float = 5.0
    verify_device: str = "cpu"
    verifiers: str = "coordinator"
    verifier_keys: tuple[str, ...] = ()
    operator_token: str | None = None  # bearer token of the operator view (per-node detail, evidence, tokens)
    join_token: str | None = None  # a shared join token (legacy); per-participant tokens: `trainnet tokens issue`
    join_token_max_keys: int = 64  # keys the shared join token may register

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("operator_token", "join_token"):
            d[k] = bool(d[k])  # never echo secrets
        return d


class ApiError(Exception):
    """An error reply: HTTP status, reason code, human detail, optional extra JSON fields and headers."""

    def __init__(self, status: int, code: str, detail: str = "", extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail
        self.extra, self.headers = extra or {}, headers or {}


class RateLimiter:
    """Token buckets keyed by node id or client address; thread-safe; bounded in size."""

    def __init__(self, rate_per_s: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate_per_s, max(burst, 1.0), max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, now: float) -> float:
        """Spend one token; return 0.0 if allowed, else how many seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.max_keys:  # forget full buckets first: they carry no state
                for k in [k for k, (t, _) in self._buckets.items() if t >= self.burst][: self.max_keys // 2]:
                    del self._buckets[k]
            return (1.0 - tokens) / self.rate


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_dups(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _check_type(name: str, value: Any, typ: type, max_string: int) -> None:
    if typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, typ)
    if not ok:
        raise ApiError(400, "bad_request", f"field {name!r} must be {typ.__name__}")
    if isinstance(value, str) and len(value) > max_string:
        raise ApiError(400, "bad_request", f"field {name!r} is longer than {max_string} characters")


def parse_json_object(raw: bytes, required: dict[str, type], optional: dict[str, type] | None = None,
                      max_string: int = 256) -> dict[str, Any]:
    """Parse a JSON object with exactly these fields (required + optional), checking their types."""
    optional = optional or {}
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constants, object_pairs_hook=_no_dups)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}"[:300]) from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    extra = set(data) - set(required) - set(optional)
    if extra:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(extra))[:200]}")
    for name, typ in required.items():
        if name not in data:
            raise ApiError(400, "bad_request", f"missing field {name!r}")
        _check_type(name, data[name], typ, max_string)
    for name, typ in optional.items():
        if name in data and data[name] is not None:
            _check_type(name, data[name], typ, max_string)
    return data


def check_info(info: Any, limits: ServerLimits) -> dict[str, Any]:
    """A node's self-description: a flat object of short scalars (nothing nested, nothing huge)."""
    if info is None:
        return {}
    if not isinstance(info, dict) or len(info) > limits.max_info_keys:
        raise ApiError(400, "bad_request", f"info must be an object of at most {limits.max_info_keys} keys")
    for k, v in info.items():
        if len(k) > 64:
            raise ApiError(400, "bad_request", "info keys must be at most 64 characters")
        if v is None or isinstance(v, bool | int):
            continue
        if isinstance(v, float) and math.isfinite(v):
            continue
        if isinstance(v, str) and len(v) <= limits.max_string:
            continue
        raise ApiError(400, "bad_request", f"info[{k!r}] must be a short scalar")
    return dict(info)
