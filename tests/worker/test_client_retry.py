"""CoordinatorClient retry policy against a scripted loopback HTTP server (fast, in-process)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from trainnet.protocol import auth
from trainnet.worker.client import ApiError, CoordinatorClient, RetryPolicy, Unreachable
from trainnet.worker.procs import free_port


def _serve(script: list[tuple[int, dict, dict]], seen: list[dict]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append({"path": self.path, "headers": dict(self.headers), "body": body, "t": time.monotonic()})
            status, headers, payload = script.pop(0) if script else (200, {}, {"ok": True})
            data = json.dumps(payload).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_retries_5xx_and_429_with_retry_after_then_signs_each_attempt(tmp_path: Path) -> None:
    seen: list[dict] = []
    script = [(503, {}, {"error": "x"}), (429, {"Retry-After": "0.3"}, {"error": "rate_limited"}),
              (200, {}, {"task": None, "reason": "budget_reached", "retry_after_s": 1.0})]
    srv = _serve(script, seen)
    key = auth.load_or_create_key(tmp_path)
    client = CoordinatorClient(f"http://127.0.0.1:{srv.server_port}", key, seed=0,
                               retry=RetryPolicy(budget_s=10, base_s=0.01, max_s=0.05))
    try:
        reply = client.lease()
    finally:
        client.close()
        srv.shutdown()
    assert reply["reason"] == "budget_reached" and len(seen) == 3
    assert seen[2]["t"] - seen[1]["t"] >= 0.3  # Retry-After honoured over the (shorter) own backoff
    pub = auth.public_key_hex(key)
    for req in seen:  # every attempt carries a valid signature of its own
        assert auth.verify_request(pub, req["headers"], "POST", "/v1/lease", req["body"], time.time()) is None


def test_4xx_is_not_retried_and_carries_the_code(tmp_path: Path) -> None:
    seen: list[dict] = []
    srv = _serve([(409, {}, {"error": "too_stale", "detail": "tau 9 > 8"})], seen)
    client = CoordinatorClient(f"http://127.0.0.1:{srv.server_port}", auth.load_or_create_key(tmp_path))
    try:
        with pytest.raises(ApiError) as err:
            client.heartbeat("t1")
    finally:
        client.close()
        srv.shutdown()
    assert err.value.status == 409 and err.value.code == "too_stale" and len(seen) == 1


def test_unreachable_coordinator_gives_up_within_the_budget(tmp_path: Path) -> None:
    client = CoordinatorClient(f"http://127.0.0.1:{free_port()}", auth.load_or_create_key(tmp_path), seed=1,
                               retry=RetryPolicy(budget_s=1.0, base_s=0.05, max_s=0.2))
    t0 = time.monotonic()
    with pytest.raises(Unreachable):
        client.lease()
    assert time.monotonic() - t0 < 3.0
    client.close()
