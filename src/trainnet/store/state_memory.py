"""An in-memory StateStore: the simulator's default, and the reference semantics for the conformance suite.

    store = MemoryStateStore()
    fence = store.acquire_writer("sim"); store.commit(changes, fence); store.load_state()

Documents are stored as their JSON text (the same `dumps` the SQL backends use), so anything a real
backend would refuse (NaN, non-JSON values) is refused here too and a loaded state is a fresh copy.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from trainnet.store.state import Changes, Doc, Fenced, StateStore, WriterLocked, dumps
from trainnet.store.state_encode import encode_changes


class MemoryStateStore(StateStore):
    url = "memory:"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token = 0
        self._owner: str | None = None
        self._meta: dict[str, str] = {}
        self._core_meta: str | None = None
        self._docs: dict[str, dict[str, str]] = {}
        self._logs: dict[str, dict[str, str]] = {}
        self._events: list[Doc] = []
        self._val: dict[int, str] = {}
        self._traffic: dict[str, int] = {}
        self._tasks: dict[tuple[str, int, str], Doc] = {}
        self._task_seq = 0

    # ------------------------------------------------------------------ fencing
    def acquire_writer(self, owner: str) -> int:
        with self._lock:
            if self._owner is not None:
                raise WriterLocked(f"this in-memory run is already written by {self._owner}")
            self._owner = owner
            self._token += 1
            return self._token

    def release_writer(self) -> None:
        with self._lock:
            self._owner = None

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> Any | None:
        with self._lock:
            v = self._meta.get(key)
        return None if v is None else json.loads(v)

    def set_meta(self, key: str, value: Any) -> None:
        text = dumps(value)
        with self._lock:
            self._meta[key] = text

    # ------------------------------------------------------------------ core state
    def load_state(self) -> dict[str, Any] | None:
        with self._lock:
            # Collections whose rows were all deleted are left out, as a SQL table of rows cannot tell them apart.
            docs = {c: {k: json.loads(v) for k, v in rows.items()} for c, rows in self._docs.items() if rows}
            if self._core_meta is None and not docs:
                return None
            return {"meta": None if self._core_meta is None else json.loads(self._core_meta), "docs": docs}

    def commit(self, changes: Changes, fence: int) -> None:
        # Encode everything first: a document that cannot be stored fails the whole commit, as in SQL.
        enc = encode_changes(changes)
        with self._lock:
            if fence != self._token:
                raise Fenced(f"fencing token {fence} is stale (current {self._token})")
            if enc.meta is not None:
                self._core_meta = enc.meta
            for c, k in enc.deletes:
                self._docs.get(c, {}).pop(k, None)
            for c, k, text in enc.upserts:
                self._docs.setdefault(c, {})[k] = text
            for kind, k, text in enc.logs:
                self._logs.setdefault(kind, {})[k] = text
            for t, kind, data in enc.events:
                self._events.append({"id": len(self._events) + 1, "time": t, "kind": kind, "data": json.loads(data)})
            for job, shard, phase, spec in enc.tasks:
                self._task_seq += 1
                self._tasks[(job, shard, phase)] = {"job_id": job, "shard": shard, "phase": phase,
                                                    "spec": json.loads(spec), "status": "pending", "owner": None,
                                                    "until": 0.0, "result": None, "attempt": 0,
                                                    "seq": self._task_seq}

    # ------------------------------------------------------------------ logs and events
    def log_get(self, kind: str, key: str) -> Doc | None:
        with self._lock:
            v = self._logs.get(kind, {}).get(key)
        return None if v is None else json.loads(v)

    def log_list(self, kind: str, limit: int = 100, offset: int = 0) -> list[Doc]:
        with self._lock:
            rows = list(self._logs.get(kind, {}).values())  # dicts keep first-insertion order
        return [json.loads(v) for v in reversed(rows)][offset:offset + limit]

    def log_count(self, kind: str) -> int:
        with self._lock:
            return len(self._logs.get(kind, {}))

    def events_since(self, after_id: int = 0, limit: int = 1000) -> list[Doc]:
        with self._lock:
            return [dict(e) for e in self._events[after_id:after_id + limit]]

    def events_tail(self, limit: int = 40) -> list[Doc]:
        with self._lock:
            return [dict(e) for e in self._events[-limit:]] if limit > 0 else []

    # ------------------------------------------------------------------ observability
    def add_val_point(self, version: int, tokens: int, val_loss: float, time: float, extra: Doc | None = None) -> None:
        doc = {"version": int(version), "tokens": int(tokens), "val_loss": float(val_loss), "time": float(time),
               **(extra or {})}
        text = dumps(doc)
        with self._lock:
            self._val[int(version)] = text

    def val_curve(self) -> list[Doc]:
        with self._lock:
            return [json.loads(self._val[v]) for v in sorted(self._val)]

    def add_traffic(self, counts: dict[str, int]) -> None:
        with self._lock:
            for k, v in counts.items():
                if v:
                    self._traffic[k] = self._traffic.get(k, 0) + int(v)

    def traffic(self) -> dict[str, int]:
        with self._lock:
            return dict(self._traffic)

    # ------------------------------------------------------------------ merge tasks
    def claim_merge_task(self, owner: str, now: float, lease_s: float) -> Doc | None:
        with self._lock:
            ready = [t for t in self._tasks.values()
                     if t["status"] == "pending" or (t["status"] == "claimed" and t["until"] <= now)]
            if not ready:
                return None
            t = min(ready, key=lambda t: t["seq"])
            t.update(status="claimed", owner=owner, until=now + lease_s, attempt=t["attempt"] + 1)
            return {k: t[k] for k in ("job_id", "shard", "phase", "spec", "attempt")}

    def finish_merge_task(self, job_id: str, shard: int, phase: str, owner: str, result: Doc) -> bool:
        text = dumps(result)
        with self._lock:
            t = self._tasks.get((job_id, int(shard), phase))
            if t is None or t["status"] != "claimed" or t["owner"] != owner:
                return False
            t.update(status="done", result=json.loads(text))
            return True

    def release_merge_task(self, job_id: str, shard: int, phase: str, owner: str) -> bool:
        with self._lock:
            t = self._tasks.get((job_id, int(shard), phase))
            if t is None or t["status"] != "claimed" or t["owner"] != owner:
                return False
            t.update(status="pending", owner=None, until=0.0)
            return True

    def merge_tasks(self, job_id: str) -> list[Doc]:
        with self._lock:
            return [{k: t[k] for k in ("job_id", "shard", "phase", "spec", "status", "owner", "result")}
                    for t in sorted(self._tasks.values(), key=lambda t: t["seq"]) if t["job_id"] == job_id]

    def drop_merge_tasks(self, job_id: str) -> int:
        with self._lock:
            gone = [k for k, t in self._tasks.items() if t["job_id"] == job_id]
            for k in gone:
                del self._tasks[k]
            return len(gone)

    def health_check(self) -> None:
        return None
