"""HTTP client for the TrainNet coordinator protocol 2.0 (see docs/PROTOCOL.md and the HTTP contract).

    key = auth.load_or_create_key(state_dir)
    client = CoordinatorClient("http://127.0.0.1:8470", key)
    client.info()                                     # the run; NotCoordinator if the URL is not TrainNet
    client.info()                                     # sets client.run_id (signatures are bound to the run)
    client.register(join_token=None)                  # {"node_id", "run_id", "min_counter"}
    task = client.lease()                             # {"task": {...}, "upload": {...}} or {"task": None, ...}
    reply = client.upload(task, body, update_signature, meta)   # direct POST or presigned PUT + commit
    client.version("latest"); client.get_url(url)     # a version's signed manifest, then its blobs
    client.reveal(task_id, residuals_safetensors)     # an audited task's r_in / r_out (docs/PROTOCOL.md)
    client.audit_claim(); client.audit_material(t); client.audit_verdict(t, True, {...})   # verifier nodes

Every signed request (protocol 2) carries a fresh timestamp and counter on every attempt, the run id in what
is signed, and the body's sha256 in a header; a `replay` refusal with `min_counter` (a coordinator restarted
since the counter was drawn) raises the counter and is retried at once. Network errors,
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
        self.run_id = ""  # set by info(): every signature is bound to the run
        self.counter = auth.Counter()
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
            self.run_id = str(doc["run_id"])
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

    def register(self, join_token: str | None = None, info: dict[str, Any] | None = None,
                 pow_nonce: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"public_key": auth.public_key_hex(self.key)}
        if join_token:
            body["join_token"] = join_token
        if info:
            body["info"] = info
        if pow_nonce is not None:
            body["pow"] = pow_nonce
        out = self._json("POST", "/v1/register", body)
        if isinstance(out.get("min_counter"), int):
            self.counter.bump(out["min_counter"])
        return out

    def lease(self) -> dict[str, Any]:
        return self._json("POST", "/v1/lease", {})

    def heartbeat(self, task_id: str, budget_s: float | None = None,
                  progress: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"task_id": task_id}
        if progress:
            body["progress"] = progress
        return self._json("POST", "/v1/heartbeat", body, budget_s=budget_s)

    def abandon(self, task_id: str, budget_s: float | None = 10.0) -> dict[str, Any]:
        # Called while stopping, so it must not be interrupted by the stop flag; short budget.
        return self._json("POST", "/v1/abandon", {"task_id": task_id}, budget_s=budget_s, interruptible=False)

    def version(self, version: int | str = "latest") -> dict[str, Any]:
        """A published version: {"manifest": signed manifest, "urls": {blob key: URL}, "latest": n}."""
        return self._json("GET", f"/v1/version/{version}")

    def get_url(self, url: str, limit: int | None = None) -> bytes:
        """A blob by the URL a version reply gave: a coordinator path, or a presigned object-store URL."""
        if url.startswith("/"):
            return self._send("GET", url, limit=limit or self.max_download_bytes)[1]
        return self._send("GET", url, limit=limit or self.max_download_bytes, absolute=True)[1]

    def shard(self, shard_id: int) -> bytes:
        return self._send("GET", f"/v1/shard/{int(shard_id)}", limit=self.max_download_bytes)[1]

    def upload(self, task: dict[str, Any], upload: dict[str, Any], body: bytes, update_signature: str,
               meta: dict[str, Any]) -> dict[str, Any]:
        """Deliver an encoded update as the lease said: POST it to the coordinator, or PUT it to the presigned
        object-store URL and POST the signed metadata. Not interruptible: an encoded update is delivered
        before the worker stops."""
        sig = {"X-TrainNet-Update-Signature": update_signature}
        task_id = task["task_id"]
        if upload.get("method") == "PUT" and upload.get("url"):
            self._send("PUT", upload["url"], body=body, content_type="application/octet-stream", limit=JSON_LIMIT,
                       interruptible=False, absolute=True, sign=False)
            r, data = self._send("POST", f"/v1/update/{task_id}/commit",
                                 body=json.dumps(meta, separators=(",", ":")).encode(),
                                 content_type="application/json", extra_headers=sig, limit=JSON_LIMIT,
                                 interruptible=False)
            return self._parse_json(r, data)
        r, data = self._send("POST", f"/v1/update/{task_id}", body=body, content_type="application/octet-stream",
                             extra_headers=sig, limit=JSON_LIMIT, interruptible=False)
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
        return self._send("GET", path, limit=self.max_download_bytes, budget_s=budget_s, sign=True)[1]

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
              limit: int, budget_s: float | None = None, interruptible: bool = True, raise_4xx: bool = True,
              absolute: bool = False, sign: bool | None = None) -> tuple[httpx.Response, bytes]:
        """One call with retries. A 4xx reply raises ApiError, or with raise_4xx=False is returned. POSTs (and
        GETs with sign=True) are signed afresh on every attempt; `absolute` URLs (presigned) never are."""
        sign = (method == "POST") if sign is None else sign
        budget = self.retry.budget_s if budget_s is None else budget_s
        start = time.monotonic()
        attempt = 0
        while True:
            if interruptible and self.stop.is_set():
                raise Stopped(f"{method} {path}")
            headers = dict(extra_headers or {})
            if content_type:
                headers["Content-Type"] = content_type
            if sign and not absolute:
                now = time.time()
                headers.update(auth.sign_request(self.key, self.node_id, self.run_id, method, path, body or b"", now,
                                                 self.counter.next(now)))
            wait, why = None, ""
            try:
                r, data = self._once(method, path if absolute else self.base_url + path, body, params, headers,
                                     limit)
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
                    floor = err.get("min_counter") if isinstance(err, dict) else None
                    if code == "replay" and isinstance(floor, int) and attempt < 3:
                        self.counter.bump(floor)  # the coordinator restarted after this counter was drawn
                        attempt += 1
                        continue
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
        with self._http.stream(method, path, content=body, params=params, headers=headers) as r:
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
