"""SIGINT / SIGTERM handling shared by the long-running nodes (worker, verifier).

    with stop_signals(self._on_signal):   # installed only in the main thread; the old handlers come back
        return self._loop()
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    old = {}
    if threading.current_thread() is threading.main_thread():  # signal.signal refuses other threads
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
