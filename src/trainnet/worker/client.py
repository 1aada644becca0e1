"""HTTP client for the TrainNet coordinator protocol v1 (see docs/PROTOCOL.md and the HTTP contract).

    key = auth.load_or_create_key(state_dir)
    client = CoordinatorClient("http://127.0.0.1:8470", key)
    client.info()                                     # the run; NotCoordinator if the URL is not TrainNet
    client.register(join_token=None)                  # {"node_id", "run_id"}
    task = client.lease()                             # {"task": {...}} or {"task": None, "reason", ...}
    reply = client.upload(body, update_signature)     # {"accepted", "reason", "version", "staleness", "audit"}
    client.reveal(task_id, residuals_safetensors)     # an audited task's r_in / r_out (docs/PROTOCOL.md)
    client.audit_claim(); client.audit_material(t); client.audit_verdict(t, True, {...})   # verifier nodes

Every POST is signed with `auth.sign_request` (fresh timestamp on every attempt). Network errors,
5xx and 429 are retried with exponential backoff and full jitter (429 honours Retry-After), within
a bounded time budget per call; past it the call raises `Unreachable`. Any other 4xx raises
`ApiError` with the server's error code. Responses are read with a size cap, and nothing received
is ever unpickled: JSON, safetensors and the validated update wire format only.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from trainnet.protocol import auth

JSON_LIMIT = 16 << 20  # no JSON reply of this protocol comes near 16 MiB


class ApiError(Exception):
    """The coordinator answered with a 4xx error (not retried). `code` is its reason code; `body` the
    whole JSON error object (e.g. a 409 replay's `audit` field), {} if it was not JSON."""

    def __init__(self, status: int, code: str, detail: str = "", body: dict[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}" if detail else f"HTTP {status} {code}")
        self.status, self.code, self.detail, self.body = status, code, detail, body or {}


class NotCoordinator(ValueError):
    """The URL answers HTTP, but GET /v1/info is not a TrainNet info document (a JSON object with
    `protocol` and `run_id`): a wrong port or path, some other web server. Not a refusal."""


class Unreachable(Exception):
    """The coordinator could not be reached (or kept failing) within the retry budget."""


class Stopped(Exception):
    """A stop was requested while the client was waiting to retry."""


@dataclass
class RetryPolicy:
    """Bounded exponential backoff with full jitter: delay = uniform(0, min(max_s, base_s * 2**n))."""

    budget_s: float = 300.0  # total time one call may spend retrying before Unreachable
    base_s: float = 0.25
    max_s: float = 10.0
    timeout_s: float = 120.0  # per-request read/write timeout (large uploads on slow links)

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_s, self.base_s * (2 ** min(attempt, 30))))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class CoordinatorClient:
    """Synchronous client; thread-safe enough for one worker loop plus one heartbeat thread."""

    def __init__(self, base_url: str, key: Any = None, node_id: str | None = None, *,
                 retry: RetryPolicy | None = None, seed: int | None = None,
                 stop: threading.Event | None = None, max_download_bytes: int = 4 << 30,
                 on_retry: Any = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.node_id = node_id or (auth.node_id_of(bytes.fromhex(auth.public_key_hex(key))) if key else "")
        self.retry = retry or RetryPolicy()
        self.rng = random.Random(seed)
        self.stop = stop or threading.Event()
        self.max_download_bytes = max_download_bytes
        self.on_retry = on_retry  # callable(str) told about each retry, for the status line
        self.bytes_up = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        t = self.retry.timeout_s
        self._http = httpx.Client(timeout=httpx.Timeout(t, connect=5.0, pool=5.0), follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ endpoints
    def info(self) -> dict[str, Any]:
        """The run's info document; raises NotCoordinator when the server is not a TrainNet coordinator
        (retries network errors, 5xx and 429 like every call, then Unreachable)."""
        try:
            r, data = self._send("GET", "/v1/info", limit=JSON_LIMIT, raise_4xx=False)
        except ApiError as exc:  # only reply_too_large gets here: no info document is that large
            raise NotCoordinator(f"{self.base_url} is not a TrainNet coordinator (GET /v1/info: {exc})") from None
        doc: Any = None
        if r.status_code == 200:
            try:
                doc = json.loads(data)
            except ValueError:
                doc = None
        if isinstance(doc, dict) and "protocol" in doc and "run_id" in doc:
            return doc
        ctype = r.headers.get("content-type", "").split(";")[0].strip() or "no content type"
        what = f"HTTP {r.status_code} {ctype}"
        if isinstance(doc, dict):
            what += ", a JSON object without protocol and run_id"
        if r.headers.get("location"):
            what += f", redirecting to {r.headers['location'][:200]}"
        raise NotCoordinator(f"{self.base_url} is not a TrainNet coordinator (GET /v1/info answered {what})")

    def status(self) -> dict[str, Any]:
        return self._json("GET", "/v1/status")

    def register(self, join_token: str | None = None, info: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"public_key": auth.public_key_hex(self.key)}
        if join_token:
            body["join_token"] = join_token
        if info:
            body["info"] = info
        return self._json("POST", "/v1/register", body)

    def lease(self) -> dict[str, Any]:
        return self._json("POST", "/v1/lease", {})

    def heartbeat(self, task_id: str, budget_s: float | None = None) -> dict[str, Any]:
        return self._json("POST", "/v1/heartbeat", {"task_id": task_id}, budget_s=budget_s)

    def abandon(self, task_id: str, budget_s: float | None = 10.0) -> dict[str, Any]:
        # Called while stopping, so it must not be interrupted by the stop flag; short budget.
        return self._json("POST", "/v1/abandon", {"task_id": task_id}, budget_s=budget_s, interruptible=False)

    def model(self, version: int | str = "latest", since: int | None = None) -> tuple[bytes, int | None]:
        """Full safetensors of `version`, or with `since` the fp16-encoded difference; returns
        (bytes, version from the X-TrainNet-Version header)."""
        params = {"since": str(since)} if since is not None else None
        r, data = self._send("GET", f"/v1/model/{version}", params=params, limit=self.max_download_bytes)
        raw = r.headers.get("x-trainnet-version")
        return data, int(raw) if raw is not None and raw.strip().isdigit() else None

    def shard(self, shard_id: int) -> bytes:
        return self._send("GET", f"/v1/shard/{int(shard_id)}", limit=self.max_download_bytes)[1]

    def upload(self, body: bytes, update_signature: str) -> dict[str, Any]:
        # Not interruptible: an update that is already encoded is delivered before the worker stops.
        r, data = self._send("POST", "/v1/update", body=body, content_type="application/octet-stream",
                             extra_headers={"X-TrainNet-Update-Signature": update_signature},
                             limit=JSON_LIMIT, interruptible=False)
        return self._parse_json(r, data)

    def reveal(self, task_id: str, body: bytes, budget_s: float | None = 60.0) -> dict[str, Any]:
        """POST an audited task's residuals (safetensors r_in/<param>, r_out/<param>). Not interruptible:
        a reveal that is not made in time fails the audit."""
        r, data = self._send("POST", f"/v1/audit/{task_id}/residuals", body=body,
                             content_type="application/octet-stream", limit=JSON_LIMIT, budget_s=budget_s,
                             interruptible=False)
        return self._parse_json(r, data)

    # ------------------------------------------------------------------ designated verifier nodes
    def audit_claim(self) -> dict[str, Any]:
        """{"audit": {...}} (a claimed audit: spec, ef_in/ef_out, codec, tolerance, material path, deadline)
        or {"audit": None, "reason": "none_ready" | "done", "retry_after_s"}."""
        return self._json("POST", "/v1/audit/claim", {})

    def audit_material(self, task_id: str, budget_s: float | None = 60.0) -> bytes:
        """The claimed audit's safetensors (update/<p>, r_in/<p>, r_out/<p>); a signed GET with an empty
        body. The budget stays well under the server's clock-skew window, as one timestamp serves all tries."""
        path = f"/v1/audit/{task_id}/material"
        signed = auth.sign_request(self.key, self.node_id, "GET", path, b"", time.time())
        return self._send("GET", path, extra_headers=signed, limit=self.max_download_bytes, budget_s=budget_s)[1]

    def audit_verdict(self, task_id: str, passed: bool, detail: dict[str, Any]) -> dict[str, Any]:
        """Report a claimed audit's verdict (detail: finite numbers plus `reason` / `which`)."""
        return self._json("POST", f"/v1/audit/{task_id}/verdict", {"passed": bool(passed), "detail": detail},
                          budget_s=60.0, interruptible=False)

    # ------------------------------------------------------------------ plumbing
    def _json(self, method: str, path: str, payload: dict[str, Any] | None = None, *,
              budget_s: float | None = None, interruptible: bool = True) -> dict[str, Any]:
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        r, data = self._send(method, path, body=body, content_type="application/json", limit=JSON_LIMIT,
                             budget_s=budget_s, interruptible=interruptible)
        return self._parse_json(r, data)

    @staticmethod
    def _parse_json(r: httpx.Response, data: bytes) -> dict[str, Any]:
        try:
            out = json.loads(data)
        except ValueError:
            raise ApiError(r.status_code, "bad_reply", f"not JSON: {data[:80]!r}") from None
        if not isinstance(out, dict):
            raise ApiError(r.status_code, "bad_reply", "JSON reply is not an object")
        return out

    def _send(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None,
              params: dict[str, str] | None = None, extra_headers: dict[str, str] | None = None,
              limit: int, budget_s: float | None = None, interruptible: bool = True, raise_4xx: bool = True
              ) -> tuple[httpx.Response, bytes]:
        """One call with retries. A 4xx reply raises ApiError, or with raise_4xx=False is returned."""
        budget = self.retry.budget_s if budget_s is None else budget_s
        start = time.monotonic()
        attempt = 0
        while True:
            if interruptible and self.stop.is_set():
                raise Stopped(f"{method} {path}")
            headers = dict(extra_headers or {})
            if content_type:
                headers["Content-Type"] = content_type
            if method == "POST":
                headers.update(auth.sign_request(self.key, self.node_id, method, path, body or b"", time.time()))
            wait, why = None, ""
            try:
                r, data = self._once(method, path, body, params, headers, limit)
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}: {str(exc)[:80]}"
            else:
                if r.status_code < 400 or (not raise_4xx and r.status_code < 500 and r.status_code != 429):
                    return r, data
                if r.status_code == 429 or r.status_code >= 500:
                    why = f"HTTP {r.status_code}"
                    wait = _retry_after(r.headers.get("retry-after")) if r.status_code in (429, 503) else None
                else:
                    code, detail, err = f"http_{r.status_code}", "", None
                    try:
                        err = json.loads(data)
                        code, detail = str(err.get("error", code)), str(err.get("detail", ""))
                    except (ValueError, AttributeError):
                        err, detail = None, data[:200].decode("utf-8", "replace")
                    raise ApiError(r.status_code, code, detail, err if isinstance(err, dict) else None)
            delay = wait if wait is not None else self.retry.delay(attempt, self.rng)
            attempt += 1
            left = budget - (time.monotonic() - start)
            if delay > left:
                raise Unreachable(f"{method} {path}: gave up after {attempt} attempt(s) in "
                                  f"{time.monotonic() - start:.0f}s (last: {why})")
            if self.on_retry is not None:
                self.on_retry(f"{method} {path} failed ({why}); retry {attempt} in {delay:.1f}s")
            if interruptible:
                if self.stop.wait(delay):
                    raise Stopped(f"{method} {path}")
            else:
                time.sleep(delay)

    def _once(self, method: str, path: str, body: bytes | None, params: dict[str, str] | None,
              headers: dict[str, str], limit: int) -> tuple[httpx.Response, bytes]:
        with self._http.stream(method, self.base_url + path, content=body, params=params, headers=headers) as r:
            declared = r.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise ApiError(r.status_code, "reply_too_large", f"{declared} bytes > limit {limit}")
            chunks, n = [], 0
            for chunk in r.iter_bytes():
                n += len(chunk)
                if n > limit:
                    raise ApiError(r.status_code, "reply_too_large", f"more than {limit} bytes")
                chunks.append(chunk)
        with self._lock:
            self.bytes_up += len(body or b"")
            self.bytes_down += n
        return r, b"".join(chunks)
