"""Disk full under load (issue 10: ROLLBACK raised over the real error and every failed request rebuilt the
core). The service's degraded mode: the first failed commit answers 503 and reloads the engine once; later
writes answer 503 at once, without touching the engine; a health check brings it back; nothing that was
acknowledged is lost. In-process, with a state store that starts refusing writes."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_helpers import Harness, refusal, tiny_cfg  # noqa: E402

from trainnet.server.service import Unavailable  # noqa: E402
from trainnet.store.state import Changes, StoreUnavailable  # noqa: E402
from trainnet.store.state_memory import MemoryStateStore  # noqa: E402
from trainnet.store.state_sqlite import SqliteStateStore  # noqa: E402


class FullDisk(MemoryStateStore):
    """A memory store whose writes fail while `full` is set (as StoreUnavailable, like SQLITE_FULL)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.loads = 0
        self.refused = 0

    def commit(self, changes: Changes, fence: int) -> None:
        if self.full:
            self.refused += 1
            raise StoreUnavailable("database or disk is full (test)")
        super().commit(changes, fence)

    def health_check(self) -> None:
        if self.full:
            raise StoreUnavailable("database or disk is full (test)")

    def load_state(self) -> dict[str, Any] | None:
        self.loads += 1
        return super().load_state()


def test_full_disk_answers_503_reloads_once_and_recovers() -> None:
    store = FullDisk()
    h = Harness.open(state=store)
    a, b = h.node(), h.node()
    store.full = True
    loads = store.loads
    with pytest.raises(Unavailable):
        h.lease(a)  # the commit fails: 503, the engine is rebuilt from the store once
    assert store.loads == loads + 1 and h.svc.degraded and "full" in h.svc.degraded
    core = h.svc.core
    assert not core.leases  # the lease that was not stored does not exist
    counters = (core.task_counter, len(core.leases), store.refused)
    for _ in range(50):  # every further write: 503 at once, the engine untouched, no reload, no commit tried
        with pytest.raises(Unavailable):
            h.lease(b)
    assert h.svc.core is core and (core.task_counter, len(core.leases), store.refused) == counters
    assert store.loads == loads + 1
    assert h.api.status()["degraded"]  # reads still answer, and say why
    h.rt.housekeeping()  # still full: stays degraded
    assert h.svc.degraded
    store.full = False
    h.rt.housekeeping()  # the health check passes
    assert h.svc.degraded is None
    task = h.lease(b)
    assert task["task_id"] in h.svc.state.load_state()["docs"]["leases"]


def test_upload_while_degraded_is_refused_before_the_body_and_leaves_no_blob() -> None:
    store = FullDisk()
    h = Harness.open(state=store)
    n = h.node()
    task = h.lease(n)
    body = h.honest_update(n, task)
    store.full = True
    with pytest.raises(Unavailable):
        h.tick()  # any write: the service turns degraded
    blobs = sorted(h.svc.blobs.list())
    with pytest.raises(Unavailable):
        h.upload(n, task, body)
    assert sorted(h.svc.blobs.list()) == blobs
    store.full = False
    h.rt.housekeeping()
    assert h.upload(n, task, body)["accepted"]


def test_full_disk_under_concurrent_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """The server's threaded commit pipeline on real SQLite (SQLITE_FULL through max_page_count): leases from
    8 threads; each is either acknowledged and durable or answered Unavailable; then the disk recovers."""
    state = SqliteStateStore(tmp_path / "coordinator.db")
    h = Harness.open(state=state, cfg=tiny_cfg("consensus.max_leases_per_node=1000"))
    nodes = [h.node() for _ in range(8)]
    h.svc.sync = False
    h.svc.start([])
    granted: list[str] = []
    errors: list[BaseException] = []
    unavailable = [0]
    lock = threading.Lock()

    def worker(n: Any) -> None:
        for _ in range(25):
            try:
                reply = h.post(n, "/v1/lease", {}, h.api.lease)
                with lock:
                    granted.append(reply["task"]["task_id"])
            except Unavailable:
                with lock:
                    unavailable[0] += 1
            except Exception as exc:  # an ApiError or anything else is a failure of the degraded mode
                with lock:
                    errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    while len(granted) < 16 and any(t.is_alive() for t in threads):
        time.sleep(0.005)
    pages = state._conn.execute("PRAGMA page_count").fetchone()[0]
    state._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from here
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert unavailable[0] > 0 and h.svc.degraded and "full" in h.svc.degraded
    acked = set(granted)
    state._conn.execute("PRAGMA max_page_count = 1073741823")  # space is back
    for _ in range(100):
        h.rt.housekeeping()
        if h.svc.degraded is None:
            break
        time.sleep(0.05)
    assert h.svc.degraded is None
    assert h.post(nodes[0], "/v1/lease", {}, h.api.lease)["task"] is not None
    h.svc.close()
    reopened = SqliteStateStore(tmp_path / "coordinator.db")
    stored = set(reopened.load_state()["docs"]["leases"])
    reopened.close()
    assert acked <= stored, sorted(acked - stored)[:5]  # every acknowledged lease is durable


def test_refusals_are_apierrors_not_crashes_while_degraded() -> None:
    store = FullDisk()
    h = Harness.open(state=store)
    n = h.node()
    store.full = True
    with pytest.raises(Unavailable):
        h.tick()
    # unauthenticated and malformed requests are still answered with their own 4xx
    assert refusal(lambda: h.api.auth.caller({}, "POST", "/v1/lease", h.clock.now)).status == 401
    assert refusal(lambda: h.post(n, "/v1/heartbeat", {"task_id": 5}, h.api.heartbeat)).status == 400


def test_request_refused_by_a_full_disk_cannot_be_replayed_after_recovery() -> None:
    """A captured request whose commit failed (503) is not granted when replayed once the disk is back: the
    reload after the failure keeps every counter already seen (like a restart does)."""
    store = FullDisk()
    h = Harness.open(state=store)
    n = h.node()
    captured = h.headers(n, "POST", "/v1/lease", b"{}")
    store.full = True
    with pytest.raises(Unavailable):
        h.api.lease(h.api.auth.caller(captured, "POST", "/v1/lease", h.clock.now), b"{}", h.clock.now)
    store.full = False
    h.rt.housekeeping()
    assert h.svc.degraded is None
    h.clock.now += 1.0
    err = refusal(lambda: h.api.auth.caller(captured, "POST", "/v1/lease", h.clock.now))
    assert (err.status, err.code) == (401, "replay")
    assert not h.core.leases
    assert h.lease(n)  # the node itself goes on with fresh counters


def test_a_write_whose_commit_failed_is_never_acknowledged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The threaded pipeline: a request that starts waiting only after its batch failed (and the engine was
    reloaded) must still get Unavailable, not an acknowledgement of a write that is not stored."""
    store = FullDisk()
    h = Harness.open(state=store)
    n = h.node()
    h.svc.sync = False
    h.svc.start([])
    real_wait = h.svc._wait

    def late_wait(seq: int) -> None:  # this request thread is slow: the committer fails and reloads first
        end = time.monotonic() + 10
        while (h.svc.degraded is None or h.svc._committed < seq) and time.monotonic() < end:
            time.sleep(0.005)
        real_wait(seq)
    monkeypatch.setattr(h.svc, "_wait", late_wait)
    store.full = True
    try:
        with pytest.raises(Unavailable):
            h.lease(n)
        assert not (store.load_state()["docs"].get("leases") or {})
    finally:
        h.svc.close()
