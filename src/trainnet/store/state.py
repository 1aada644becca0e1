"""The StateStore interface: the control plane's durable state as rows, plus logs and merge tasks.

    store = open_state_store("sqlite:///var/trainnet/state/coordinator.db")  # or "postgresql://...", "memory:"
    fence = store.acquire_writer("host:pid")       # only one coordinator writes a run (WriterLocked otherwise)
    snap = store.load_state()                      # None when nothing was ever committed
    store.commit(changes, fence)                   # one transaction; Fenced if another writer took over

The coordinator core's state is one JSON-able value (core/state.py): a `meta` document (counters, version,
queue) and collections of documents keyed by id (nodes, leases, buffered updates, audits, chain heads, merge
jobs). A `Changes` carries only what some steps touched, as row-level upserts and deletes, so the cost of a
durable step does not depend on how many nodes exist. History that is never read back into the core
(every accepted update, every audit verdict, published versions) goes to append/upsert-only `logs`, and
core events to an append-only event log. Merge tasks are the data plane's work queue: the core creates
them inside a commit; aggregator processes claim them (PostgreSQL: FOR UPDATE SKIP LOCKED) and report
results outside the fence. Backends: memory (the simulator; state_memory.py), SQLite (the embedded default;
state_sqlite.py), PostgreSQL (psycopg 3; state_postgres.py); one conformance suite (tests/store/).
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import Any

Doc = dict[str, Any]


class StoreError(Exception):
    """Base class of state store errors."""


class WriterLocked(StoreError):
    """Another coordinator holds this run's writer lock; the message says who and since when."""


class Fenced(StoreError):
    """A commit carried a fencing token that is no longer current: another writer took over."""


class StoreUnavailable(StoreError):
    """The store refused a write (disk full, connection lost, read-only); nothing of the commit applied."""


@dataclass
class Changes:
    """Row-level changes of one or more coordinator steps, applied in one transaction.

    meta:        the core's meta document, whole (it is small and O(1) in the number of nodes), or None.
    docs:        collection -> key -> document, or None to delete that row.
    logs:        kind -> key -> document (upserted; never deleted): "updates", "audits", "versions", ...
    events:      {"time", "kind", "data"} appended to the event log, in order.
    merge_tasks: new tasks {"job_id", "shard", "phase", "spec"} for aggregators to claim.
    """

    meta: Doc | None = None
    docs: dict[str, dict[str, Doc | None]] = field(default_factory=dict)
    logs: dict[str, dict[str, Doc]] = field(default_factory=dict)
    events: list[Doc] = field(default_factory=list)
    merge_tasks: list[Doc] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.meta is not None or self.docs or self.logs or self.events or self.merge_tasks)

    def fold(self, later: Changes) -> None:
        """Fold a later step's changes into this one (group commit): the later value of a row wins."""
        if later.meta is not None:
            self.meta = later.meta
        for coll, rows in later.docs.items():
            self.docs.setdefault(coll, {}).update(rows)
        for kind, rows in later.logs.items():
            self.logs.setdefault(kind, {}).update(rows)
        self.events.extend(later.events)
        self.merge_tasks.extend(later.merge_tasks)

    def rows(self) -> int:
        """How many rows this commit writes (for the persistence-cost benchmark)."""
        return (int(self.meta is not None) + sum(len(r) for r in self.docs.values())
                + sum(len(r) for r in self.logs.values()) + len(self.events) + len(self.merge_tasks))


def dumps(doc: Any) -> str:
    """The one JSON encoding every backend stores (compact; NaN/inf refused, like the HTTP API)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, sort_keys=True)


class StateStore(abc.ABC):
    url: str

    # ------------------------------------------------------------------ fencing
    @abc.abstractmethod
    def acquire_writer(self, owner: str) -> int:
        """Become the run's only writer; returns the fencing token every commit must carry.
        Raises WriterLocked (naming the holder) while another live coordinator holds the run."""

    @abc.abstractmethod
    def release_writer(self) -> None:
        """Give the writer lock up (on clean shutdown); a crashed holder's lock is released by the OS/server."""

    # ------------------------------------------------------------------ meta (outside the core state)
    @abc.abstractmethod
    def get_meta(self, key: str) -> Any | None: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: Any) -> None: ...

    # ------------------------------------------------------------------ the core's state
    @abc.abstractmethod
    def load_state(self) -> dict[str, Any] | None:
        """{"meta": doc | None, "docs": {collection: {key: doc}}}, or None when nothing was committed."""

    @abc.abstractmethod
    def commit(self, changes: Changes, fence: int) -> None:
        """Apply `changes` atomically and durably (all or nothing). Raises Fenced when `fence` is not the
        current writer token, StoreUnavailable when the backend refuses the write."""

    # ------------------------------------------------------------------ logs and events
    @abc.abstractmethod
    def log_get(self, kind: str, key: str) -> Doc | None: ...

    @abc.abstractmethod
    def log_list(self, kind: str, limit: int = 100, offset: int = 0) -> list[Doc]:
        """The newest `limit` documents of a log (by first insertion, newest first), skipping `offset`."""

    @abc.abstractmethod
    def log_count(self, kind: str) -> int: ...

    @abc.abstractmethod
    def events_since(self, after_id: int = 0, limit: int = 1000) -> list[Doc]:
        """Events with id > after_id, oldest first: {"id", "time", "kind", "data"}."""

    @abc.abstractmethod
    def events_tail(self, limit: int = 40) -> list[Doc]:
        """The last `limit` events, oldest first."""

    # ------------------------------------------------------------------ observability (own transactions)
    @abc.abstractmethod
    def add_val_point(self, version: int, tokens: int, val_loss: float, time: float, extra: Doc | None = None) -> None: ...

    @abc.abstractmethod
    def val_curve(self) -> list[Doc]:
        """[{"version", "tokens", "val_loss", "time", **extra}] by version."""

    @abc.abstractmethod
    def add_traffic(self, counts: dict[str, int]) -> None: ...

    @abc.abstractmethod
    def traffic(self) -> dict[str, int]: ...

    # ------------------------------------------------------------------ merge tasks (the data plane's queue)
    @abc.abstractmethod
    def claim_merge_task(self, owner: str, now: float, lease_s: float) -> Doc | None:
        """Claim the oldest task that is pending or whose claim lapsed (at most one claimant at a time,
        also across processes): {"job_id", "shard", "phase", "spec", "attempt"}; None when none is ready."""

    @abc.abstractmethod
    def finish_merge_task(self, job_id: str, shard: int, phase: str, owner: str, result: Doc) -> bool:
        """Record a claimed task's result; False (and nothing recorded) if `owner` no longer holds it."""

    @abc.abstractmethod
    def release_merge_task(self, job_id: str, shard: int, phase: str, owner: str) -> bool:
        """Hand a claimed task back (its claimant is known to be gone); False if `owner` does not hold it."""

    @abc.abstractmethod
    def merge_tasks(self, job_id: str) -> list[Doc]:
        """Every task of a job: {"job_id", "shard", "phase", "spec", "status", "owner", "result"}."""

    @abc.abstractmethod
    def drop_merge_tasks(self, job_id: str) -> int:
        """Forget a finished job's tasks (the pruner, once it has read them); how many rows went. Without this
        the queue grows by 2 x shards rows per version for the whole run."""

    # ------------------------------------------------------------------ health
    @abc.abstractmethod
    def health_check(self) -> None:
        """A tiny write in its own transaction; raises StoreUnavailable while the store refuses writes."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release connections and locks."""


def open_state_store(url: str) -> StateStore:
    """`memory:`, `sqlite:///abs/path.db` (or a path ending in .db), `postgresql://...` / `postgres://...`."""
    if url == "memory:":
        from trainnet.store.state_memory import MemoryStateStore

        return MemoryStateStore()
    if url.startswith(("postgresql://", "postgres://")):
        from trainnet.store.state_postgres import PostgresStateStore

        return PostgresStateStore(url)
    from trainnet.store.state_sqlite import SqliteStateStore

    return SqliteStateStore(url[len("sqlite:///") - 1:] if url.startswith("sqlite:///") else url)
