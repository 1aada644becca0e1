"""Connection hygiene for the HTTP server: a cap on open connections and a deadline for request headers.

    config = uvicorn.Config(app, http=guarded_h11(max_connections=512, header_timeout_s=10.0), ...)

uvicorn alone holds a connection open for as long as its client trickles request headers (slowloris) and has
no hard cap on sockets; both are fixed here at the protocol level, before the ASGI app sees anything. Body
read timeouts are enforced by the app itself (app.py), which reads bodies with a deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def guarded_h11(max_connections: int, header_timeout_s: float) -> type[H11Protocol]:
    class GuardedH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()  # over the cap: refused before a byte is read
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
            super().connection_lost(exc)

    return GuardedH11
