"""A byte-counting HTTP front for a local object store: every request passes through, and the bytes each way
are tallied, so a run can say where its bytes went (what the object store received and served).

    with CountingProxy("http://127.0.0.1:9000") as proxy:   # upstream: the S3 server
        ...point the run's S3 endpoint at proxy.url...
        proxy.counts()   # {"bytes_in": ..., "bytes_out": ..., "requests": ..., "by_method": {"PUT": [n, in, out]}}

It forwards verbatim (method, path with query, headers, body), so presigned URLs work: the signature covers
the host, and the local emulator does not check signatures. Bodies are streamed in 1 MiB pieces, never held
whole. Loopback only; a development tool, not a production proxy.
"""

from __future__ import annotations

import http.client
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

PIECE = 1 << 20
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class CountingProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        u = urlsplit(upstream)
        self.upstream_host, self.upstream_port = u.hostname or "127.0.0.1", u.port or 80
        self._lock = threading.Lock()
        self._counts: dict[str, Any] = {"bytes_in": 0, "bytes_out": 0, "requests": 0, "by_method": {}}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _forward(self) -> None:
                proxy._forward(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client that goes away mid-request (a worker stopped at the end of a run) is not an error
                # worth a traceback on the demo's terminal; anything else still prints one.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.server = Server((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="s3-proxy")
        self._local = threading.local()

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {**self._counts, "by_method": {k: list(v) for k, v in self._counts["by_method"].items()}}

    def _add(self, method: str, n_in: int, n_out: int) -> None:
        with self._lock:
            c = self._counts
            c["bytes_in"] += n_in
            c["bytes_out"] += n_out
            c["requests"] += 1
            row = c["by_method"].setdefault(method, [0, 0, 0])
            row[0] += 1
            row[1] += n_in
            row[2] += n_out

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=120)
        return conn

    def _body(self, h: BaseHTTPRequestHandler) -> bytes:
        """The request body (Content-Length or chunked); local requests of a test run, so in memory here."""
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(h.rfile.read(size))
                h.rfile.readline()
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        body = self._body(h)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        if body or h.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        for attempt in (0, 1):  # a kept-alive upstream connection may have been closed: one fresh retry
            conn = self._conn()
            try:
                conn.request(h.command, h.path, body=body, headers=headers)
                resp = conn.getresponse()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    h.send_error(502, "object store unreachable")
                    return
        out = 0
        h.send_response_only(resp.status, resp.reason)
        length = resp.getheader("Content-Length")
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:
                h.send_header(k, v)
        if length is None and h.command != "HEAD":
            h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        if h.command != "HEAD":
            while piece := resp.read(PIECE):
                out += len(piece)
                if length is None:
                    h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                else:
                    h.wfile.write(piece)
            if length is None:
                h.wfile.write(b"0\r\n\r\n")
        else:
            resp.read()
        if resp.will_close:
            conn.close()
            self._local.conn = None
        self._add(h.command, len(body), out)
