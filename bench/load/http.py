"""A minimal asyncio HTTP/1.1 client for load generation: keep-alive connections in a bounded pool.

    http = MiniHttp("127.0.0.1", 8470, max_connections=256, timeout_s=10.0)
    status, headers, body = await http.request("POST", "/v1/lease", body, {"X-...": "..."})
    await http.close()

Why not httpx: its connection pool scans every connection for every queued request (measured here: ~8 ms of
client CPU per request with a few hundred requests in flight), so with thousands of simulated nodes on the same
2 cores the load generator, not the coordinator, would be measured. This client costs a few hundred
microseconds per request. It speaks only what the coordinator answers: Content-Length bodies (chunked too).
`timeout_s` bounds the whole request, waiting for a pooled connection included; it raises TimeoutError.
"""

from __future__ import annotations

import asyncio
import time


class HttpError(Exception):
    """The connection failed or the reply was not HTTP/1.1 the way this client reads it."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.idle_since = reader, writer, time.monotonic()

    def close(self) -> None:
        self.writer.close()


class MiniHttp:
    def __init__(self, host: str, port: int, max_connections: int = 256, timeout_s: float = 10.0,
                 idle_s: float = 4.0) -> None:
        # idle_s stays well under the coordinator's 10 s idle cut-off, so a kept-alive connection is never
        # reused just as the server closes it.
        self.host, self.port, self.timeout_s, self.idle_s = host, port, timeout_s, idle_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Conn] = []
        self.opened = 0

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        async with asyncio.timeout(self.timeout_s), self._slots:
            conn = self._take()
            if conn is None:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                conn = _Conn(reader, writer)
                self.opened += 1
            try:
                out = await self._exchange(conn, method, path, body, headers or {})
            except BaseException:
                conn.close()
                raise
            if out[1].get("connection", "").lower() == "close":
                conn.close()
            else:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            return out

    def _take(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # most recently used first
            if now - conn.idle_since < self.idle_s and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    async def _exchange(self, conn: _Conn, method: str, path: str, body: bytes,
                        headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await conn.writer.drain()
        head = await conn.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"bad status line {status_line[:80]!r}")
        hdrs: dict[str, str] = {}
        for line in header_lines:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if "content-length" in hdrs:
            data = await conn.reader.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await conn.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunks.append(await conn.reader.readexactly(size + 2))
                if size == 0:
                    break
            data = b"".join(c[:-2] for c in chunks)
        else:
            raise HttpError("reply without Content-Length or chunked body")
        return int(parts[1]), hdrs, data

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle = []
