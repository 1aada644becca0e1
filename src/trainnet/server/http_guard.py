"""Connection hygiene for the HTTP server: caps on open connections (in all, and per client address), a
deadline and a size cap for request headers.

    config = uvicorn.Config(app, http=guarded_h11(max_connections=512, header_timeout_s=10.0), ...)

uvicorn alone holds a connection open for as long as its client trickles request headers (slowloris) and has
no hard cap on sockets; both are fixed here at the protocol level, before the ASGI app sees anything. The
per-address cap keeps one address from taking every slot until the header deadline frees them (behind a
reverse proxy every client has the proxy's address: raise or turn it off there). h11's
max_incomplete_event_size only bounds a head that arrives in pieces: one that arrives whole (64 KiB in one
loopback segment) was accepted; here every request head is counted as it arrives and one longer than
`max_header_bytes` is answered 431 and the connection closed. Body read timeouts are enforced by the app
itself (app.py), which reads bodies with a deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_TOO_LARGE_BODY = b'{"error": "headers_too_large", "detail": "request line and headers too long"}'
TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
             b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(_TOO_LARGE_BODY)) + _TOO_LARGE_BODY


def guarded_h11(max_connections: int, header_timeout_s: float, max_header_bytes: int = 16 * 1024,
                max_per_address: int = 0) -> type[H11Protocol]:
    per_address: dict[str, int] = {}  # open connections by client address (the event loop's thread only)

    class GuardedH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _peer: str | None = None
        _head_seen = 0  # bytes of the current request head received so far
        _head_tail = b""  # its last 3 bytes (a CRLFCRLF may straddle two reads)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE and not self._head_fits(data):
                self.transport.write(TOO_LARGE)
                self.transport.close()
                return
            super().data_received(data)

        def _head_fits(self, data: bytes) -> bool:
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            before = self._head_seen - len(self._head_tail)
            if end >= 0:
                self._head_seen, self._head_tail = 0, b""
                return before + end + 4 <= max_header_bytes
            self._head_seen += len(data)
            self._head_tail = window[-3:]
            return self._head_seen <= max_header_bytes

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            self._peer = str(peer[0]) if peer else None
            mine = 0
            if self._peer is not None:
                mine = per_address[self._peer] = per_address.get(self._peer, 0) + 1
            if len(self.connections) > max_connections or 0 < max_per_address < mine:
                transport.close()  # over a cap: refused before a byte is read
                return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_overdue)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_overdue(self) -> None:
            # Still waiting for a complete request line and headers: a slow or idle client is dropped.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on a kept-alive connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._peer is not None:
                left = per_address.get(self._peer, 1) - 1
                if left > 0:
                    per_address[self._peer] = left
                else:
                    per_address.pop(self._peer, None)
                self._peer = None
            super().connection_lost(exc)

    return GuardedH11
