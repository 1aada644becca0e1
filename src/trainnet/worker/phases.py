"""The threads and timers around a node's training thread (worker/session.py, worker/node.py, trainnet/dropin.py).

    timer = PhaseTimer(); with timer.span("lease"): ...; timer.take()    # seconds per phase since the last take
    beat = Heartbeat(session, task); beat.start(); ...; beat.done.set()  # keeps a lease alive, reports progress
    d = Deliveries(session); d.start(); d.submit(task, result); d.close()  # deliveries in order, off the loop
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from trainnet.worker.client import ApiError, Stopped, Unreachable

if TYPE_CHECKING:
    from trainnet.worker.session import NodeSession

PROGRESS_EVERY_S = 60.0
PHASES = ("lease", "download", "shard", "wait", "train", "prefetch")  # prefetch: on its own thread


class PhaseTimer:
    """Seconds spent per phase (thread-safe); `take()` returns and clears them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._open: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.total[phase] = self.total.get(phase, 0.0) + seconds
            self._open[phase] = self._open.get(phase, 0.0) + seconds

    def take(self) -> dict[str, float]:
        with self._lock:
            out, self._open = self._open, dict.fromkeys(PHASES, 0.0)
        return {k: round(v, 4) for k, v in out.items()}

    def span(self, phase: str) -> _Span:
        return _Span(self, phase)


class _Span:
    def __init__(self, timer: PhaseTimer, phase: str) -> None:
        self.timer, self.phase = timer, phase

    def __enter__(self) -> _Span:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.add(self.phase, time.perf_counter() - self.t0)


class Heartbeat(threading.Thread):
    """Keeps a lease alive and reports the task's progress: heartbeats when half of the remaining lease has
    passed, and at least every PROGRESS_EVERY_S seconds (the coordinator's log and dashboard show it)."""

    def __init__(self, session: NodeSession, task: dict[str, Any]) -> None:
        super().__init__(daemon=True, name="heartbeat")
        self.session, self.task_id = session, task["task_id"]
        self.offset = float(task["issued_at"]) - time.time()  # server clock - local clock
        self.deadline = float(task["deadline"])
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            left = self.deadline - (time.time() + self.offset)
            if self.done.wait(max(0.5, min(left / 2, PROGRESS_EVERY_S))):
                return
            try:
                reply = self.session.client.heartbeat(self.task_id, budget_s=max(2.0, left / 3),
                                                      progress=self.session.progress or None)
                self.deadline = float(reply.get("deadline", self.deadline))
            except (ApiError, Unreachable, Stopped, ValueError) as exc:
                self.session.status.log(f"heartbeat {self.task_id}: {exc}")
                if isinstance(exc, ApiError | Stopped):
                    return  # lease gone or stopping: nothing left to keep alive


class Deliveries(threading.Thread):
    """Delivers trained tasks one at a time, in order, on a background thread while the caller trains the next
    one: `submit(task, result, ...)` takes NodeSession.deliver's arguments; `close()` delivers what is pending."""

    def __init__(self, session: NodeSession) -> None:
        super().__init__(daemon=True, name="deliveries")
        self.session = session
        self.jobs: queue.Queue[tuple | None] = queue.Queue()
        self.pending = 0
        self.idle = threading.Condition()

    def submit(self, *job: Any) -> None:
        with self.idle:
            self.pending += 1
        self.jobs.put(job)

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                self.session.deliver(*job)
            except Exception as exc:  # noqa: BLE001 - a failed delivery is logged; its lease expires
                self.session.status.log(f"delivery of {job[0]['task_id']} failed: {type(exc).__name__}: {exc}")
                self.session.release(str(job[0]["task_id"]))
            finally:
                with self.idle:
                    self.pending -= 1
                    self.idle.notify_all()

    def wait(self, below: int = 1) -> None:
        """Until fewer than `below` deliveries are pending (1: all delivered)."""
        with self.idle:
            while self.pending >= below:
                self.idle.wait()

    def close(self) -> None:
        self.wait()
        self.jobs.put(None)
        self.join()
