"""The control plane's service layer: one engine, its StateStore and BlobStore, and a group-commit pipeline.
The HTTP shell (app.py) and the simulator drive the same object (through api.py).

    svc = Service(RunSpec.load(cfg), open_state_store(url), open_blob_store(url), ServerLimits())
    reply = svc.step(lambda core: core.lease(LeaseRequest(node_id), now))   # durable before it returns
    svc.pump(now)          # merge orchestration: stats -> plan -> apply -> signed manifest -> published version
    svc.start() / svc.close()                                               # background threads (the server)

Durability without a global lock across IO: `step` runs the engine under a short lock (microseconds, no IO),
takes its row-level Changes and hands them to a committer thread, which folds every pending step into one
transaction (group commit) and wakes the waiting requests. A reply is sent only once everything it could have
observed is durable. If a commit fails (disk full, the database gone, another writer took over) the service
turns `degraded`: the steps of that batch and everything after it answer 503, the engine is reloaded from the
store once, and further writes answer 503 at once (without touching the engine) until a health check passes.
With `sync=True` (the simulator, in-process tests) steps commit inline and no thread runs.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trainnet.aggregate import keys
from trainnet.aggregate.publish import build_manifest, sign_manifest
from trainnet.core.engine import Coordinator
from trainnet.server.limits import ServerLimits
from trainnet.server.runspec import RunSpec
from trainnet.store.blobs import BlobStore
from trainnet.store.state import Changes, StateStore, StoreError

log = logging.getLogger("trainnet.coordinator")
T = TypeVar("T")


class Unavailable(Exception):
    """The service cannot make progress durable right now (HTTP 503 with Retry-After)."""


class StoreMismatch(RuntimeError):
    """The state store belongs to a different run (model, data or consensus settings changed)."""


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Service:
    def __init__(self, spec: RunSpec, state: StateStore, blobs: BlobStore, limits: ServerLimits | None = None, *,
                 owner: str | None = None, clock: Callable[[], float] = time.time, sync: bool = False) -> None:
        self.spec, self.state, self.blobs = spec, state, blobs
        self.limits = limits or ServerLimits()
        self.clock, self.sync = clock, sync
        self.owner = owner or default_owner()
        self.started_at = clock()
        self.fence = state.acquire_writer(self.owner)  # WriterLocked: another coordinator holds this run
        self.ccfg = spec.ccfg
        self._check_fingerprint()
        self.ccfg.audit_key = self._secret("audit_key")
        self.key = self._signing_key()
        self.lock = threading.Lock()  # guards the engine; never held across IO
        self._commit_cv = threading.Condition()
        self._queue: list[tuple[int, Changes]] = []
        self._enqueued = 0  # sequence number of the last step with changes
        self._committed = 0  # every step up to this sequence number has its outcome: stored, or failed
        self._failed: list[tuple[int, int]] = []  # (lo, hi]: steps whose commit failed (the last 64 ranges)
        self.degraded: str | None = None
        self.commit_ms: list[float] = []  # recent commit durations (the load benchmark reads them)
        self.commit_rows: list[int] = []
        self._traffic: dict[str, int] = {}
        self._traffic_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Condition()  # duties sleep on it; a step that hands work to them wakes them
        self._wakes = 0
        self._threads: list[threading.Thread] = []
        self.core = self._load(clock())

    # ------------------------------------------------------------------ build / restore
    def _check_fingerprint(self) -> None:
        fp = self.spec.fingerprint()
        old = self.state.get_meta("fingerprint")
        if old is None:
            self.state.set_meta("fingerprint", fp)
        elif old != fp:
            diff = sorted(k for k in fp if old.get(k) != fp[k])
            sub = [f"{k}.{f}" for k in diff if isinstance(fp[k], dict) and isinstance(old.get(k), dict)
                   for f in sorted(fp[k]) if old[k].get(f) != fp[k][f]]
            raise StoreMismatch(f"{self.state.url} holds another run's state; settings differ: {sub or diff}")

    def _secret(self, name: str) -> str:
        value = self.state.get_meta(name)
        if not isinstance(value, str):
            value = secrets.token_hex(16)
            self.state.set_meta(name, value)
        return value

    def _signing_key(self) -> Ed25519PrivateKey:
        """The coordinator's ed25519 key: it signs every published version manifest."""
        pem = self.state.get_meta("coordinator_key")
        if isinstance(pem, str):
            key = serialization.load_pem_private_key(pem.encode(), password=None)
            assert isinstance(key, Ed25519PrivateKey)
            return key
        key = Ed25519PrivateKey.generate()
        self.state.set_meta("coordinator_key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
        return key

    def _load(self, now: float) -> Coordinator:
        snap = self.state.load_state()
        if snap is None:
            core = Coordinator.fresh(self.ccfg, self.spec.corpus.manifest, self.spec.layout.numel, now)
            self.state.commit(core.take_changes(), self.fence)
            log.info("new run %s: %d parameters, %d aggregator shard(s)", self.ccfg.run_id, self.spec.layout.numel,
                     self.ccfg.shards)
            return core
        core = Coordinator.from_state(self.ccfg, self.spec.corpus.manifest, self.spec.layout.numel, snap)
        # Replay protection across restarts: requests signed before this start are refused (docs/PROTOCOL.md).
        floor = int(self.started_at * 1e6)
        for node in core.nodes.values():
            node.counter = max(node.counter, floor)
        log.info("restored version %d: %d nodes, %d leases, %d buffered, %d audits, %d job(s)", core.version,
                 len(core.nodes), len(core.leases), len(core.buffer), len(core.audits), len(core.jobs))
        return core

    # ------------------------------------------------------------------ steps
    def read(self, fn: Callable[[Coordinator], T]) -> T:
        """A read-only look at the engine (nothing committed; the reply waits for what it may have seen)."""
        with self.lock:
            out = fn(self.core)
            seq = self._enqueued
        self._wait(seq)
        return out

    def step(self, fn: Callable[[Coordinator], T]) -> T:
        """Run `fn` on the engine under the lock; return once its changes (and all earlier ones) are durable."""
        if self.degraded is not None:
            raise Unavailable(f"the state store refuses writes ({self.degraded}); retry later")
        with self.lock:
            out = fn(self.core)
            changes = self.core.take_changes()
            if changes.merge_tasks or changes.logs.get("versions"):
                self.kick()  # aggregators have work; the next merge or the evaluator may be due
            if changes:
                if self.sync:
                    self._commit_now([changes])
                    return out
                with self._commit_cv:
                    self._enqueued += 1
                    self._queue.append((self._enqueued, changes))
                    self._commit_cv.notify_all()
            seq = self._enqueued
        self._wait(seq)
        return out

    def _wait(self, seq: int) -> None:
        """Return once step `seq` (and every earlier one) is stored; Unavailable if its commit failed."""
        if not self.sync and seq > self._committed:
            with self._commit_cv:
                while self._committed < seq and not self._stop.is_set():
                    self._commit_cv.wait(1.0)
        if seq > self._committed or any(lo < seq <= hi for lo, hi in self._failed):
            raise Unavailable(f"the state store refused the write ({self.degraded or 'stopping'}); retry later")

    def _commit_now(self, batch: list[Changes]) -> None:
        """Commit a batch synchronously (sync mode); on failure reload the engine and raise Unavailable."""
        merged = batch[0]
        for ch in batch[1:]:
            merged.fold(ch)
        t0 = time.perf_counter()
        try:
            self.state.commit(merged, self.fence)
        except StoreError as exc:
            self._degrade(exc)
            raise Unavailable(str(exc)) from None
        self._record_commit(t0, merged)

    def _record_commit(self, t0: float, ch: Changes) -> None:
        self.commit_ms = (self.commit_ms + [1000 * (time.perf_counter() - t0)])[-4096:]
        self.commit_rows = (self.commit_rows + [ch.rows()])[-4096:]

    def _committer(self) -> None:
        while True:
            with self._commit_cv:
                while not self._queue and not self._stop.is_set():
                    self._commit_cv.wait(0.5)
                if not self._queue and self._stop.is_set():
                    return
                batch, self._queue = self._queue, []
            merged = batch[0][1]
            for _, ch in batch[1:]:
                merged.fold(ch)
            upto = batch[-1][0]
            t0 = time.perf_counter()
            try:
                self.state.commit(merged, self.fence)
            except Exception as exc:  # StoreError, or anything unexpected: never acknowledge what is not stored
                log.error("commit of steps up to %d failed: %s", upto, exc)
                with self.lock:  # nothing else touches the engine while it is rebuilt
                    with self._commit_cv:
                        rest, self._queue = self._queue, []
                        hi = max(upto, rest[-1][0] if rest else upto)
                        self._failed = (self._failed + [(batch[0][0] - 1, hi)])[-64:]
                        self._committed = hi  # decided: failed (a waiter checks _failed, whenever it looks)
                        self._commit_cv.notify_all()
                    self._degrade(exc, locked=True)
                continue
            self._record_commit(t0, merged)
            with self._commit_cv:
                self._committed = upto
                self._commit_cv.notify_all()

    def _degrade(self, exc: Exception, locked: bool = False) -> None:
        """Enter degraded mode: the engine is rebuilt from the store once; writes answer 503 until healthy."""
        self.degraded = f"{type(exc).__name__}: {exc}"[:300]
        try:
            snap = self.state.load_state()
        except Exception as load_exc:  # the store may not even read: keep the old engine, stay degraded
            log.error("reload after a failed commit failed too: %s", load_exc)
            return
        core = Coordinator.from_state(self.ccfg, self.spec.corpus.manifest, self.spec.layout.numel, snap or {})

        def swap() -> None:
            for node_id, node in core.nodes.items():  # replay protection: a counter seen stays used
                prev = self.core.nodes.get(node_id)
                if prev is not None:
                    node.counter = max(node.counter, prev.counter)
            self.core = core
        if locked or self.sync:
            swap()
        else:
            with self.lock:
                swap()
        with self._commit_cv:
            # the reloaded engine is a step of its own, stored: reads from here on see no failed step
            self._committed = self._enqueued = max(self._committed, self._enqueued) + 1

    def probe(self) -> bool:
        """While degraded: is the store writable again? Clears the degraded mode when it is."""
        if self.degraded is None:
            return True
        try:
            self.state.health_check()
        except Exception:
            return False
        log.warning("state store writable again; leaving degraded mode (was: %s)", self.degraded)
        self.degraded = None
        return True

    # ------------------------------------------------------------------ the data plane's results
    def pump(self, now: float) -> bool:
        """Advance the merge job in flight when all its tasks of the current phase are done. True if it did."""
        with self.lock:
            job = next(iter(self.core.jobs.values()), None)
            if job is None:
                return False
            job_id, phase = job.job_id, job.phase
        rows = [r for r in self.state.merge_tasks(job_id) if r["phase"] == phase]
        if not rows or any(r["status"] != "done" for r in rows):
            return False
        results = {int(r["shard"]): r["result"] for r in rows}
        if phase == "stats":
            def decide(core: Coordinator) -> None:
                j = core.jobs.get(job_id)
                if j is not None and j.phase == "stats":
                    core.merge_stats_done(job_id, results, now)
            self.step(decide)
            return True
        spec = rows[0]["spec"]
        version = spec["version_to"]
        doc = sign_manifest(build_manifest(self.ccfg.run_id, spec["kind"], version, self.spec.layout.numel,
                                           list(results.values()), now, exact=spec["publish"]["exact"]), self.key)
        key = keys.manifest(version)
        self.blobs.put(key, json.dumps(doc, separators=(",", ":")).encode())

        def publish(core: Coordinator) -> None:
            j = core.jobs.get(job_id)
            if j is not None and j.phase == phase:
                core.merge_applied(job_id, key, now)
        self.step(publish)
        return True

    def tick(self, now: float) -> None:
        self.step(lambda core: core.tick(now))

    # ------------------------------------------------------------------ accounting
    def count_bytes(self, kind: str, n: int) -> None:
        """Tally bytes served or received (model_delta, model_full, shard, update_in, audit_material...)."""
        with self._traffic_lock:
            self._traffic[kind] = self._traffic.get(kind, 0) + int(n)

    def traffic_pending(self) -> dict[str, int]:
        with self._traffic_lock:
            return dict(self._traffic)

    def flush_traffic(self) -> None:
        with self._traffic_lock:
            counts, self._traffic = self._traffic, {}
        if counts:
            try:
                self.state.add_traffic(counts)
            except StoreError:
                with self._traffic_lock:  # keep them for the next flush
                    for k, v in counts.items():
                        self._traffic[k] = self._traffic.get(k, 0) + v

    # ------------------------------------------------------------------ threads (the server)
    def start(self, duties: list[tuple[float, Callable[[], Any], str]] = ()) -> None:
        """Start the committer and one thread per periodic duty (interval_s, fn, name)."""
        if self.sync:
            raise RuntimeError("a sync service runs no threads")
        self._spawn(self._committer, "committer")
        for interval, fn, name in duties:
            self._spawn(lambda i=interval, f=fn, n=name: self._every(i, f, n), name)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=f"trainnet-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def kick(self) -> None:
        """Wake the duties now (new merge tasks, a finished task, a published version) instead of at their
        next interval: in the embedded topology a merge then takes milliseconds, not poll periods."""
        with self._wake:
            self._wakes += 1
            self._wake.notify_all()

    def _every(self, interval: float, fn: Callable[[], Any], name: str) -> None:
        while not self._stop.is_set():
            seen = self._wakes
            try:
                busy = fn()
            except Unavailable:
                busy = False
            except Exception:
                log.exception("%s failed", name)
                busy = False
            if not busy:
                with self._wake:
                    if self._wakes == seen and not self._stop.is_set():
                        self._wake.wait(interval)

    def close(self) -> None:
        self._stop.set()
        self.kick()
        with self._commit_cv:
            self._commit_cv.notify_all()
        for t in self._threads:
            t.join(timeout=30)
        self.flush_traffic()
        try:
            self.state.release_writer()
        finally:
            self.state.close()
            self.blobs.close()
