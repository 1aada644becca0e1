"""The embedded StateStore: one SQLite file (WAL, synchronous=FULL), created on first use.

    store = SqliteStateStore("state/coordinator.db")   # or open_state_store("sqlite:///abs/state/coordinator.db")
    fence = store.acquire_writer("host:pid")            # WriterLocked while another process writes this file
    store.commit(changes, fence)                        # one BEGIN IMMEDIATE transaction, fsynced before return

Writes (commits, claims, observability) go through one connection guarded by a lock, each in its own
`BEGIN IMMEDIATE` transaction, so they serialize with each other and with other processes on the same file
(aggregators claiming merge tasks); reads use a small pool of connections, so any thread may read while a
commit runs (WAL readers never block the writer). A commit touches only the rows in its `Changes`.

Fencing: `acquire_writer` takes an exclusive `flock` on `<db>.lock` for as long as this store holds the writer
role (the OS drops it when the process dies, however it dies) and increments a token in the `writer` row;
every commit checks that token inside its transaction, so a writer that lost the role can never write again.
`flock` is only as good as the filesystem: keep the file on a local disk, not NFS.

Errors: "database or disk is full", I/O errors, a read-only file, and a lock held past the busy timeout raise
StoreUnavailable after the transaction is rolled back; the connection stays usable, so the store works again
once the cause is gone (`health_check` tells).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from trainnet.store.state import Changes, Doc, Fenced, StateStore, StoreUnavailable, WriterLocked, dumps
from trainnet.store.state_encode import encode_changes
from trainnet.store.writer_info import describe_holder

T = TypeVar("T")

SCHEMA_VERSION = 1

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS writer (id INTEGER PRIMARY KEY CHECK (id = 1), token INTEGER NOT NULL,
       owner TEXT, pid INTEGER, host TEXT, since REAL)""",
    "INSERT OR IGNORE INTO writer (id, token) VALUES (1, 0)",
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS core_meta (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS docs (coll TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL,
       PRIMARY KEY (coll, key)) WITHOUT ROWID""",
    # id is the rowid: max+1 at first insertion, kept by an upsert, so it orders a log by first insertion.
    """CREATE TABLE IF NOT EXISTS logs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL,
       doc TEXT NOT NULL, UNIQUE (kind, key))""",
    "CREATE INDEX IF NOT EXISTS logs_kind_id ON logs (kind, id)",
    # Events are never deleted and a rolled-back insert leaves no trace, so rowids are exactly 1, 2, 3, ...
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS val_curve (version INTEGER PRIMARY KEY, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS traffic (name TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS merge_tasks (job_id TEXT NOT NULL, shard INTEGER NOT NULL, phase TEXT NOT NULL,
       seq INTEGER NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL, owner TEXT, until REAL NOT NULL,
       attempt INTEGER NOT NULL, result TEXT, PRIMARY KEY (job_id, shard, phase))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS merge_tasks_seq ON merge_tasks (seq)",
    # Claiming scans only unfinished tasks in creation order, however many finished ones pile up.
    "CREATE INDEX IF NOT EXISTS merge_tasks_open ON merge_tasks (seq) WHERE status <> 'done'",
    "CREATE INDEX IF NOT EXISTS merge_tasks_job ON merge_tasks (job_id, seq)",
    "CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL, time REAL NOT NULL)",
    "INSERT OR IGNORE INTO health (id, n, time) VALUES (1, 0, 0)",
]

# Primary result codes that mean "the store cannot take writes right now" rather than a bug in the caller.
_UNAVAILABLE = {
    sqlite3.SQLITE_BUSY: "the database is locked by another process (busy timeout passed)",
    sqlite3.SQLITE_LOCKED: "the database is locked",
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_FULL: "the database or disk is full",
    sqlite3.SQLITE_CANTOPEN: "the database file cannot be opened",
}


def _unavailable(e: sqlite3.Error) -> str | None:
    code = getattr(e, "sqlite_errorcode", None)
    return None if code is None else _UNAVAILABLE.get(code & 0xFF)


class SqliteStateStore(StateStore):
    """`SqliteStateStore(path)`: the file (and its folder) is created on first use; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str], busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path).absolute()
        self.url = f"sqlite://{self.path}"
        self._busy_timeout_s = busy_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._lock_fd: int | None = None
        self._closed = False
        try:
            self._conn = self._connect()
            self._conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise self._map(e, "open") from e
        self._write(self._create_schema, "create the schema")

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT / ROLLBACK ourselves.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has state schema version {version}; this TrainNet reads up to "
                               f"{SCHEMA_VERSION}: upgrade TrainNet")
        for stmt in SCHEMA:
            conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ------------------------------------------------------------------ transactions
    def _map(self, e: sqlite3.Error, what: str) -> Exception:
        reason = _unavailable(e)
        if reason is None:
            return e
        return StoreUnavailable(f"SQLite state store {self.path} refused to {what}: {reason} ({e})")

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # SQLite may already have rolled back by itself (e.g. after SQLITE_FULL); a ROLLBACK then raises
        # "no transaction is active", which must never hide the error that got us here.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _write(self, fn: Callable[[sqlite3.Connection], T], what: str) -> T:
        """Run fn in one BEGIN IMMEDIATE transaction on the write connection; all or nothing."""
        with self._wlock:
            if self._closed:
                raise StoreUnavailable(f"SQLite state store {self.path} is closed")
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except sqlite3.Error as e:
                self._rollback(conn)
                mapped = self._map(e, what)
                if mapped is e:
                    raise
                raise mapped from e
            except BaseException:
                self._rollback(conn)
                raise

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A pooled read connection inside one read transaction (a consistent snapshot for several SELECTs)."""
        with self._rlock:
            if self._closed:
                raise StoreUnavailable(f"SQLite state store {self.path} is closed")
            conn = self._readers.pop() if self._readers else None
        try:
            if conn is None:
                conn = self._connect()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                self._rollback(conn)
        except sqlite3.Error as e:
            mapped = self._map(e, "read")
            if mapped is e:
                raise
            raise mapped from e
        finally:
            if conn is not None:
                with self._rlock:
                    if self._closed:
                        conn.close()
                    else:
                        self._readers.append(conn)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._reading() as conn:
            return conn.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ fencing
    def acquire_writer(self, owner: str) -> int:
        with self._wlock:
            if self._lock_fd is not None:
                raise WriterLocked(f"{self.path} is already written through this store object "
                                   f"({self._holder_text()})")
            lock_path = f"{self.path}.lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise WriterLocked(f"another coordinator writes {self.path}: {self._holder_text()}; stop it first "
                                   f"(its lock on {lock_path} goes away when that process exits)") from None
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
        try:
            def take(conn: sqlite3.Connection) -> int:
                conn.execute("UPDATE writer SET token = token + 1, owner = ?, pid = ?, host = ?, since = ? WHERE id = 1",
                              (owner, os.getpid(), socket.gethostname(), time.time()))
                return int(conn.execute("SELECT token FROM writer WHERE id = 1").fetchone()[0])

            return self._write(take, "take the writer role")
        except BaseException:
            self.release_writer()
            raise

    def _holder_text(self) -> str:
        try:
            rows = self._read("SELECT owner, pid, host, since FROM writer WHERE id = 1")
        except (sqlite3.Error, StoreUnavailable):
            return "holder unknown (the writer row cannot be read)"
        return describe_holder(*rows[0]) if rows else "holder unknown"

    def release_writer(self) -> None:
        with self._wlock:
            fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> Any | None:
        rows = self._read("SELECT value FROM kv WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: Any) -> None:
        text = dumps(value)
        self._write(lambda c: c.execute("INSERT INTO kv (key, value) VALUES (?, ?) "
                                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, text)),
                    "set meta")

    # ------------------------------------------------------------------ core state
    def load_state(self) -> dict[str, Any] | None:
        with self._reading() as conn:
            meta = conn.execute("SELECT doc FROM core_meta WHERE id = 1").fetchall()
            rows = conn.execute("SELECT coll, key, doc FROM docs").fetchall()
        if not meta and not rows:
            return None
        docs: dict[str, dict[str, Any]] = {}
        for coll, key, doc in rows:
            docs.setdefault(coll, {})[key] = json.loads(doc)
        return {"meta": json.loads(meta[0][0]) if meta else None, "docs": docs}

    def commit(self, changes: Changes, fence: int) -> None:
        enc = encode_changes(changes)  # before the transaction: a bad document fails the commit, writes nothing

        def apply(conn: sqlite3.Connection) -> None:
            current = conn.execute("SELECT token FROM writer WHERE id = 1").fetchone()[0]
            if fence != current:
                raise Fenced(f"fencing token {fence} is stale (current {current}): another coordinator took "
                             f"over {self.path}")
            if enc.meta is not None:
                conn.execute("INSERT INTO core_meta (id, doc) VALUES (1, ?) "
                             "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc", (enc.meta,))
            conn.executemany("DELETE FROM docs WHERE coll = ? AND key = ?", enc.deletes)
            conn.executemany("INSERT INTO docs (coll, key, doc) VALUES (?, ?, ?) "
                             "ON CONFLICT (coll, key) DO UPDATE SET doc = excluded.doc", enc.upserts)
            conn.executemany("INSERT INTO logs (kind, key, doc) VALUES (?, ?, ?) "
                             "ON CONFLICT (kind, key) DO UPDATE SET doc = excluded.doc", enc.logs)
            conn.executemany("INSERT INTO events (time, kind, data) VALUES (?, ?, ?)", enc.events)
            # A task created again (same job, shard, phase) starts over as a new pending task, as in memory.
            conn.executemany(
                "INSERT INTO merge_tasks (job_id, shard, phase, seq, spec, status, owner, until, attempt, result) "
                "VALUES (?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM merge_tasks), ?, 'pending', NULL, 0, 0, NULL) "
                "ON CONFLICT (job_id, shard, phase) DO UPDATE SET seq = excluded.seq, spec = excluded.spec, "
                "status = 'pending', owner = NULL, until = 0, attempt = 0, result = NULL", enc.tasks)

        self._write(apply, "commit")

    # ------------------------------------------------------------------ logs and events
    def log_get(self, kind: str, key: str) -> Doc | None:
        rows = self._read("SELECT doc FROM logs WHERE kind = ? AND key = ?", (kind, key))
        return json.loads(rows[0][0]) if rows else None

    def log_list(self, kind: str, limit: int = 100, offset: int = 0) -> list[Doc]:
        rows = self._read("SELECT doc FROM logs WHERE kind = ? ORDER BY id DESC LIMIT ? OFFSET ?",
                          (kind, limit, offset))
        return [json.loads(r[0]) for r in rows]

    def log_count(self, kind: str) -> int:
        return int(self._read("SELECT count(*) FROM logs WHERE kind = ?", (kind,))[0][0])

    def events_since(self, after_id: int = 0, limit: int = 1000) -> list[Doc]:
        rows = self._read("SELECT id, time, kind, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
                          (after_id, limit))
        return [{"id": i, "time": t, "kind": k, "data": json.loads(d)} for i, t, k, d in rows]

    def events_tail(self, limit: int = 40) -> list[Doc]:
        rows = self._read("SELECT id, time, kind, data FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [{"id": int(i), "time": t, "kind": k, "data": json.loads(d)} for i, t, k, d in reversed(rows)]

    # ------------------------------------------------------------------ observability
    def add_val_point(self, version: int, tokens: int, val_loss: float, time: float, extra: Doc | None = None) -> None:
        doc = {"version": int(version), "tokens": int(tokens), "val_loss": float(val_loss), "time": float(time),
               **(extra or {})}
        text = dumps(doc)
        self._write(lambda c: c.execute("INSERT INTO val_curve (version, doc) VALUES (?, ?) "
                                        "ON CONFLICT (version) DO UPDATE SET doc = excluded.doc",
                                        (int(version), text)), "add a validation point")

    def val_curve(self) -> list[Doc]:
        return [json.loads(r[0]) for r in self._read("SELECT doc FROM val_curve ORDER BY version")]

    def add_traffic(self, counts: dict[str, int]) -> None:
        rows = [(str(k), int(v)) for k, v in counts.items() if v]
        if rows:
            self._write(lambda c: c.executemany("INSERT INTO traffic (name, count) VALUES (?, ?) "
                                                "ON CONFLICT (name) DO UPDATE SET count = count + excluded.count",
                                                rows), "add traffic")

    def traffic(self) -> dict[str, int]:
        return {name: int(n) for name, n in self._read("SELECT name, count FROM traffic")}

    # ------------------------------------------------------------------ merge tasks
    def claim_merge_task(self, owner: str, now: float, lease_s: float) -> Doc | None:
        def claim(conn: sqlite3.Connection) -> Doc | None:
            row = conn.execute("SELECT job_id, shard, phase, spec, attempt FROM merge_tasks "
                               "WHERE status <> 'done' AND (status = 'pending' OR until <= ?) ORDER BY seq LIMIT 1",
                               (now,)).fetchone()
            if row is None:
                return None
            job, shard, phase, spec, attempt = row
            conn.execute("UPDATE merge_tasks SET status = 'claimed', owner = ?, until = ?, attempt = attempt + 1 "
                         "WHERE job_id = ? AND shard = ? AND phase = ?", (owner, now + lease_s, job, shard, phase))
            return {"job_id": job, "shard": shard, "phase": phase, "spec": json.loads(spec), "attempt": attempt + 1}

        return self._write(claim, "claim a merge task")

    def finish_merge_task(self, job_id: str, shard: int, phase: str, owner: str, result: Doc) -> bool:
        text = dumps(result)
        return self._write(lambda c: c.execute(
            "UPDATE merge_tasks SET status = 'done', result = ? "
            "WHERE job_id = ? AND shard = ? AND phase = ? AND status = 'claimed' AND owner = ?",
            (text, job_id, int(shard), phase, owner)).rowcount == 1, "finish a merge task")

    def release_merge_task(self, job_id: str, shard: int, phase: str, owner: str) -> bool:
        return self._write(lambda c: c.execute(
            "UPDATE merge_tasks SET status = 'pending', owner = NULL "
            "WHERE job_id = ? AND shard = ? AND phase = ? AND status = 'claimed' AND owner = ?",
            (job_id, int(shard), phase, owner)).rowcount == 1, "release a merge task")

    def merge_tasks(self, job_id: str) -> list[Doc]:
        rows = self._read("SELECT job_id, shard, phase, spec, status, owner, result FROM merge_tasks "
                          "WHERE job_id = ? ORDER BY seq", (job_id,))
        return [{"job_id": j, "shard": s, "phase": p, "spec": json.loads(spec), "status": st, "owner": o,
                 "result": None if r is None else json.loads(r)} for j, s, p, spec, st, o, r in rows]

    def drop_merge_tasks(self, job_id: str) -> int:
        return self._write(lambda c: c.execute("DELETE FROM merge_tasks WHERE job_id = ?", (job_id,)).rowcount,
                           "drop a job's merge tasks")

    # ------------------------------------------------------------------ health
    def health_check(self) -> None:
        self._write(lambda c: c.execute("UPDATE health SET n = n + 1, time = ? WHERE id = 1", (time.time(),)),
                    "write the health row")

    def close(self) -> None:
        self.release_writer()
        with self._wlock, self._rlock:
            if self._closed:
                return
            self._closed = True
            readers, self._readers = self._readers, []
            self._conn.close()
        for conn in readers:
            conn.close()
