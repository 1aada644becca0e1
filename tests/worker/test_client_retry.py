"""CoordinatorClient retry policy against a scripted loopback HTTP server (fast, in-process), and what a
worker says when its URL is not a TrainNet coordinator."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from trainnet.protocol import auth
from trainnet.worker.client import ApiError, CoordinatorClient, NotCoordinator, RetryPolicy, Unreachable
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
    counters = []
    for req in seen:  # every attempt carries a valid signature of its own, with a fresh counter
        err, signed = auth.verify_request(pub, req["headers"], client.run_id, "POST", "/v1/lease", time.time())
        assert err is None and signed.body_sha256 == hashlib.sha256(req["body"]).hexdigest()
        counters.append(signed.counter)
    assert counters == sorted(set(counters))


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


def _plain_server(root: Path) -> ThreadingHTTPServer:
    """Python's own static file server on loopback: a web server that is not TrainNet."""
    handler = functools.partial(_QuietFiles, directory=str(root))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("files", "answer"), [
    ({}, "HTTP 404 text/html"),
    ({"v1/info": b'{"hello": "world"}'}, "HTTP 200 application/octet-stream, a JSON object without protocol and run_id"),
    ({"v1/info": b"<!DOCTYPE html><p>hi</p>"}, "HTTP 200 application/octet-stream"),
])
def test_info_from_a_web_server_that_is_not_trainnet(tmp_path: Path, files: dict[str, bytes], answer: str) -> None:
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    srv = _plain_server(tmp_path)
    url = f"http://127.0.0.1:{srv.server_port}"
    client = CoordinatorClient(url, retry=RetryPolicy(budget_s=2))
    try:
        with pytest.raises(NotCoordinator) as err:
            client.info()
    finally:
        client.close()
        srv.shutdown()
    assert str(err.value) == f"{url} is not a TrainNet coordinator (GET /v1/info answered {answer})"


def test_worker_pointed_at_a_plain_web_server_says_so_and_exits_5(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trainnet.worker.cli import worker_cmd

    (tmp_path / "www").mkdir()
    srv = _plain_server(tmp_path / "www")
    url = f"http://127.0.0.1:{srv.server_port}"
    try:
        res = CliRunner().invoke(worker_cmd, ["--coordinator", url, "--state", str(tmp_path / "w"), "--quiet",
                                              "--retry-budget", "2"])
    finally:
        srv.shutdown()
    assert res.exit_code == 5, res.output
    assert f"{url} is not a TrainNet coordinator (GET /v1/info answered HTTP 404 text/html)" in res.output
    assert "refused" not in res.output


def test_a_real_refusal_still_reads_refused_and_exits_3(tmp_path: Path) -> None:
    from trainnet.worker.node import EXIT_REFUSED, Worker, WorkerOptions
    from trainnet.worker.status import StatusLine

    info = {"protocol": "1.2", "run_id": "r1", "codec": "fp32",
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 8}}

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            self._reply(200, info) if self.path == "/v1/info" else self._reply(404, {"error": "not_found"})

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self._reply(403, {"error": "not_allowed", "detail": "this key is not on the allow-list"})

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    lines: list[str] = []
    status = StatusLine(enabled=False)
    status.log = lines.append  # type: ignore[method-assign]
    opts = WorkerOptions(coordinator=f"http://127.0.0.1:{srv.server_port}", state_dir=tmp_path / "w",
                         device="cpu", retry_budget_s=2)
    try:
        code = Worker(opts, status=status).run()
    finally:
        srv.shutdown()
    assert code == EXIT_REFUSED
    assert any(line.startswith("registration refused: HTTP 403 not_allowed") for line in lines), lines
