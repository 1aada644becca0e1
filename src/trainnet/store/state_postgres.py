"""The StateStore for running at scale: PostgreSQL through psycopg 3 (`pip install 'trainnet[postgres]'`).

    store = PostgresStateStore("postgresql://trainnet@db.example/run42")   # one database (or schema) per run
    fence = store.acquire_writer("host:pid")      # WriterLocked while another coordinator holds the run
    store.commit(changes, fence)                  # one transaction; Fenced after another writer took over
    task = store.claim_merge_task("agg-3", now, lease_s=60)   # any number of aggregators, any machines

The tables live in the connection's current schema (to keep several runs in one database, create a schema
per run and add `?options=-csearch_path%3Drun42` to the URL). Documents are stored as their `dumps` text, exactly as in the other backends.

Fencing has two halves. `acquire_writer` takes `pg_try_advisory_lock` on a session connection kept open for as
long as this store is the writer: the server frees it when that session ends, however the coordinator died.
And every commit starts with `UPDATE writer ... WHERE token = %s`: a writer whose token was superseded gets
Fenced, and the row lock this takes serializes commits with a concurrent `acquire_writer`.

Merge tasks are claimed with `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent claimers never wait on each
other and never get the same task.

Errors: a lost connection, a read-only server, a full disk, or an administrator shutting the session down
raise StoreUnavailable; the broken connection is dropped and the next call connects again. If a connection is
lost during COMMIT itself, the store reconnects once and reads back the commit's id from the writer row, so a
commit that did apply returns normally and StoreUnavailable still means nothing was applied; only when the
server cannot be reached at all is the outcome unknown, and the message says so.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from trainnet.store.state import Changes, Doc, Fenced, StateStore, StoreUnavailable, WriterLocked, dumps
from trainnet.store.state_encode import encode_changes
from trainnet.store.writer_info import describe_holder

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError:  # optional dependency: only this backend needs it
    psycopg = None  # type: ignore[assignment]
    pg_errors = None  # type: ignore[assignment]

T = TypeVar("T")

SCHEMA_VERSION = 1

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS writer (id INTEGER PRIMARY KEY CHECK (id = 1), token BIGINT NOT NULL,
       owner TEXT, pid INTEGER, host TEXT, since DOUBLE PRECISION, last_commit TEXT)""",
    "INSERT INTO writer (id, token) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS core_meta (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS docs (coll TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL,
       PRIMARY KEY (coll, key))""",
    # id comes from a sequence at first insertion and an upsert keeps it: it orders a log by first insertion.
    """CREATE TABLE IF NOT EXISTS logs (id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL,
       doc TEXT NOT NULL, UNIQUE (kind, key))""",
    "CREATE INDEX IF NOT EXISTS logs_kind_id ON logs (kind, id)",
    # Event ids are assigned as max + 1 under the writer row lock, not from a sequence: a sequence leaves
    # gaps when a transaction rolls back, and ids must be exactly 1, 2, 3, ... in commit order.
    """CREATE TABLE IF NOT EXISTS events (id BIGINT PRIMARY KEY, time DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL,
       data TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS val_curve (version BIGINT PRIMARY KEY, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS traffic (name TEXT PRIMARY KEY, count BIGINT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS merge_tasks (job_id TEXT NOT NULL, shard INTEGER NOT NULL, phase TEXT NOT NULL,
       seq BIGSERIAL NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL, owner TEXT,
       until DOUBLE PRECISION NOT NULL, attempt INTEGER NOT NULL, result TEXT, PRIMARY KEY (job_id, shard, phase))""",
    # Claiming scans only unfinished tasks in creation order, however many finished ones pile up.
    "CREATE INDEX IF NOT EXISTS merge_tasks_open ON merge_tasks (seq) WHERE status <> 'done'",
    "CREATE INDEX IF NOT EXISTS merge_tasks_job ON merge_tasks (job_id, seq)",
    """CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY CHECK (id = 1), n BIGINT NOT NULL,
       time DOUBLE PRECISION NOT NULL)""",
    "INSERT INTO health (id, n, time) VALUES (1, 0, 0) ON CONFLICT (id) DO NOTHING",
]

# Advisory lock keys are per database; hashing the schema name in keeps runs in different schemas apart.
_WRITER_KEY = "hashtextextended('trainnet.writer:' || current_schema(), 0)"
_SCHEMA_KEY = "hashtextextended('trainnet.schema:' || current_schema(), 0)"


def _unavailable(e: Exception) -> bool:
    """Errors that mean "the server cannot take this now", not a bug: connection, resources, read-only, I/O."""
    return isinstance(e, psycopg.OperationalError | pg_errors.ReadOnlySqlTransaction)


def _redact(url: str) -> str:
    """user@host:port/dbname of a connection string, never its password, for messages."""
    try:
        d = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "(an unparsable PostgreSQL connection string)"
    where = f"{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', '?')}"
    return f"postgresql://{d['user']}@{where}" if d.get("user") else f"postgresql://{where}"


class _Session:
    """One lazily (re)connected connection and the lock that gives one thread at a time its transactions."""

    def __init__(self, url: str, name: str, read_only: bool = False) -> None:
        self.url, self.name, self.read_only = url, name, read_only
        self.lock = threading.Lock()
        self.conn: psycopg.Connection | None = None

    def connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            conn = psycopg.connect(self.url, autocommit=False, connect_timeout=10, application_name=self.name)
            if self.read_only:
                # One snapshot for all the SELECTs of a read (load_state reads meta and docs).
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
            self.conn = conn
        return self.conn

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 (a broken connection may fail to close; it is gone either way)
                pass

    def rollback(self) -> None:
        # A failed ROLLBACK (the connection is gone) must never hide the error that got us here: drop instead.
        conn = self.conn
        if conn is None:
            return
        if conn.broken or conn.closed:
            self.drop()
            return
        try:
            conn.rollback()
        except Exception:  # noqa: BLE001
            self.drop()


class PostgresStateStore(StateStore):
    """`PostgresStateStore(url)`: creates its tables on first use in the URL's database; see the module docstring."""

    def __init__(self, url: str) -> None:
        if psycopg is None:
            raise ImportError("the PostgreSQL state store needs psycopg 3: pip install 'trainnet[postgres]' "
                              "(or pip install 'psycopg[binary]>=3.1')")
        self.url = url
        self._where = _redact(url)
        self._w = _Session(url, "trainnet-state-write")
        self._r = _Session(url, "trainnet-state-read", read_only=True)
        self._lock_conn: psycopg.Connection | None = None
        self._lock_guard = threading.Lock()
        self._closed = False
        self._write(self._create_schema, "create the schema")

    def _create_schema(self, cur: psycopg.Cursor) -> None:
        if cur.execute("SELECT current_schema()").fetchone()[0] is None:
            raise ValueError(f"{self._where}: the search_path names no existing schema to keep the state in; "
                             "CREATE SCHEMA it first (or drop the search_path option)")
        # Two processes opening a fresh database at once would race on CREATE TABLE IF NOT EXISTS.
        cur.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_KEY})")
        for stmt in SCHEMA:
            cur.execute(stmt)
        cur.execute("SELECT version FROM schema_version WHERE id = 1")
        row = cur.fetchone()
        if row is None:
            cur.execute("INSERT INTO schema_version (id, version) VALUES (1, %s)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise RuntimeError(f"{self._where} has state schema version {row[0]}; this TrainNet reads up to "
                               f"{SCHEMA_VERSION}: upgrade TrainNet")

    # ------------------------------------------------------------------ transactions
    def _refused(self, e: Exception, what: str) -> StoreUnavailable:
        return StoreUnavailable(f"PostgreSQL state store {self._where} refused to {what}: "
                                f"{type(e).__name__}: {str(e).strip()}")

    def _run(self, session: _Session, fn: Callable[[psycopg.Cursor], T], what: str,
             applied: Callable[[psycopg.Cursor], bool] | None = None) -> T:
        """fn in one transaction on `session`; all or nothing. `applied` tells, after a reconnect, whether a
        COMMIT whose reply was lost did apply."""
        with session.lock:
            if self._closed:
                raise StoreUnavailable(f"PostgreSQL state store {self._where} is closed")
            try:
                conn = session.connect()
            except psycopg.Error as e:
                if _unavailable(e):
                    raise self._refused(e, what) from e
                raise
            try:
                with conn.cursor() as cur:
                    result = fn(cur)
            except BaseException as e:
                session.rollback()
                if isinstance(e, psycopg.Error) and _unavailable(e):
                    session.drop()  # reconnect on the next call (and pick up e.g. a changed read-only default)
                    raise self._refused(e, what) from e
                raise
            try:
                conn.commit()
                return result
            except psycopg.Error as e:
                session.rollback()
                if not _unavailable(e):
                    raise
                session.drop()
                if applied is not None and self._check_applied(session, applied):
                    return result
                unknown = applied is not None and session.conn is None
                raise self._refused(e, what + (" (outcome unknown: the server could not be asked whether "
                                                   "the COMMIT applied; reload the state)" if unknown else "")) from e

    @staticmethod
    def _check_applied(session: _Session, applied: Callable[[psycopg.Cursor], bool]) -> bool:
        try:
            conn = session.connect()
            with conn.cursor() as cur:
                ok = applied(cur)
            conn.rollback()
            return ok
        except psycopg.Error:
            session.drop()
            return False

    def _write(self, fn: Callable[[psycopg.Cursor], T], what: str,
               applied: Callable[[psycopg.Cursor], bool] | None = None) -> T:
        return self._run(self._w, fn, what, applied)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def read(cur: psycopg.Cursor) -> list[tuple[Any, ...]]:
            cur.execute(sql, args)
            return cur.fetchall()

        return self._run(self._r, read, "read")

    # ------------------------------------------------------------------ fencing
    def acquire_writer(self, owner: str) -> int:
        with self._lock_guard:
            if self._lock_conn is not None and not self._lock_conn.closed:
                raise WriterLocked(f"{self._where} is already written through this store object "
                                   f"({self._holder_text()})")
            conn: psycopg.Connection | None = None
            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                                       application_name="trainnet-state-writer-lock")
                # The lock lives as long as this session: make the server notice within about a minute when
                # the coordinator's machine vanishes (TCP keepalives; the default waits two hours), and keep a
                # server-wide idle_session_timeout from ending it while we wait between commits.
                for name, value in (("tcp_keepalives_idle", "30"), ("tcp_keepalives_interval", "10"),
                                    ("tcp_keepalives_count", "3")):
                    conn.execute("SELECT set_config(%s, %s, false)", (name, value))
                if conn.info.server_version >= 140000:
                    conn.execute("SELECT set_config('idle_session_timeout', '0', false)")
                got = conn.execute(f"SELECT pg_try_advisory_lock({_WRITER_KEY})").fetchone()[0]
            except psycopg.Error as e:
                if conn is not None:
                    conn.close()
                if _unavailable(e):
                    raise self._refused(e, "take the writer lock") from e
                raise
            if not got:
                conn.close()
                raise WriterLocked(f"another coordinator writes {self._where}: {self._holder_text()}; stop it first "
                                   f"(its advisory lock goes away when its database session ends)")
            self._lock_conn = conn

        def take(cur: psycopg.Cursor) -> int:
            cur.execute("UPDATE writer SET token = token + 1, owner = %s, pid = %s, host = %s, since = %s "
                        "WHERE id = 1 RETURNING token", (owner, os.getpid(), socket.gethostname(), time.time()))
            return int(cur.fetchone()[0])

        try:
            return self._write(take, "take the writer role")
        except BaseException:
            self.release_writer()
            raise

    def _holder_text(self) -> str:
        try:
            rows = self._read("SELECT owner, pid, host, since FROM writer WHERE id = 1")
        except (psycopg.Error, StoreUnavailable):
            return "holder unknown (the writer row cannot be read)"
        return describe_holder(*rows[0]) if rows else "holder unknown"

    def release_writer(self) -> None:
        with self._lock_guard:
            conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            try:
                conn.close()  # ending the session frees the advisory lock
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> Any | None:
        rows = self._read("SELECT value FROM kv WHERE key = %s", (key,))
        return json.loads(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: Any) -> None:
        text = dumps(value)
        self._write(lambda c: c.execute("INSERT INTO kv (key, value) VALUES (%s, %s) "
                                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, text)),
                    "set meta")

    # ------------------------------------------------------------------ core state
    def load_state(self) -> dict[str, Any] | None:
        def read(cur: psycopg.Cursor) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            meta = cur.execute("SELECT doc FROM core_meta WHERE id = 1").fetchall()
            rows = cur.execute("SELECT coll, key, doc FROM docs").fetchall()
            return meta, rows

        meta, rows = self._run(self._r, read, "read the state")
        if not meta and not rows:
            return None
        docs: dict[str, dict[str, Any]] = {}
        for coll, key, doc in rows:
            docs.setdefault(coll, {})[key] = json.loads(doc)
        return {"meta": json.loads(meta[0][0]) if meta else None, "docs": docs}

    def commit(self, changes: Changes, fence: int) -> None:
        enc = encode_changes(changes)  # before the transaction: a bad document fails the commit, writes nothing
        commit_id = uuid.uuid4().hex

        def apply(cur: psycopg.Cursor) -> None:
            cur.execute("UPDATE writer SET last_commit = %s WHERE id = 1 AND token = %s", (commit_id, fence))
            if cur.rowcount != 1:
                current = cur.execute("SELECT token FROM writer WHERE id = 1").fetchone()
                raise Fenced(f"fencing token {fence} is stale (current {current[0] if current else '?'}): another "
                             f"coordinator took over {self._where}")
            if enc.meta is not None:
                cur.execute("INSERT INTO core_meta (id, doc) VALUES (1, %s) "
                            "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc", (enc.meta,))
            if enc.deletes:
                cur.executemany("DELETE FROM docs WHERE coll = %s AND key = %s", enc.deletes)
            if enc.upserts:
                cur.executemany("INSERT INTO docs (coll, key, doc) VALUES (%s, %s, %s) "
                                "ON CONFLICT (coll, key) DO UPDATE SET doc = excluded.doc", enc.upserts)
            if enc.logs:
                cur.executemany("INSERT INTO logs (kind, key, doc) VALUES (%s, %s, %s) "
                                "ON CONFLICT (kind, key) DO UPDATE SET doc = excluded.doc", enc.logs)
            if enc.events:
                # The writer row lock taken above serializes every event insert, so max + 1 cannot collide.
                first = cur.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0]
                cur.executemany("INSERT INTO events (id, time, kind, data) VALUES (%s, %s, %s, %s)",
                                [(first + i, t, k, d) for i, (t, k, d) in enumerate(enc.events)])
            if enc.tasks:
                # A task created again (same job, shard, phase) starts over as a new pending task, as in memory.
                cur.executemany(
                    "INSERT INTO merge_tasks (job_id, shard, phase, spec, status, owner, until, attempt, result) "
                    "VALUES (%s, %s, %s, %s, 'pending', NULL, 0, 0, NULL) "
                    "ON CONFLICT (job_id, shard, phase) DO UPDATE SET seq = excluded.seq, spec = excluded.spec, "
                    "status = 'pending', owner = NULL, until = 0, attempt = 0, result = NULL", enc.tasks)

        def applied(cur: psycopg.Cursor) -> bool:
            row = cur.execute("SELECT last_commit FROM writer WHERE id = 1").fetchone()
            return row is not None and row[0] == commit_id

        self._write(apply, "commit", applied)

    # ------------------------------------------------------------------ logs and events
    def log_get(self, kind: str, key: str) -> Doc | None:
        rows = self._read("SELECT doc FROM logs WHERE kind = %s AND key = %s", (kind, key))
        return json.loads(rows[0][0]) if rows else None

    def log_list(self, kind: str, limit: int = 100, offset: int = 0) -> list[Doc]:
        rows = self._read("SELECT doc FROM logs WHERE kind = %s ORDER BY id DESC LIMIT %s OFFSET %s",
                          (kind, limit, offset))
        return [json.loads(r[0]) for r in rows]

    def log_count(self, kind: str) -> int:
        return int(self._read("SELECT count(*) FROM logs WHERE kind = %s", (kind,))[0][0])

    def events_since(self, after_id: int = 0, limit: int = 1000) -> list[Doc]:
        rows = self._read("SELECT id, time, kind, data FROM events WHERE id > %s ORDER BY id LIMIT %s",
                          (after_id, limit))
        return [{"id": int(i), "time": t, "kind": k, "data": json.loads(d)} for i, t, k, d in rows]

    def events_tail(self, limit: int = 40) -> list[Doc]:
        rows = self._read("SELECT id, time, kind, data FROM events ORDER BY id DESC LIMIT %s", (limit,))
        return [{"id": int(i), "time": t, "kind": k, "data": json.loads(d)} for i, t, k, d in reversed(rows)]

    # ------------------------------------------------------------------ observability
    def add_val_point(self, version: int, tokens: int, val_loss: float, time: float, extra: Doc | None = None) -> None:
        doc = {"version": int(version), "tokens": int(tokens), "val_loss": float(val_loss), "time": float(time),
               **(extra or {})}
        text = dumps(doc)
        self._write(lambda c: c.execute("INSERT INTO val_curve (version, doc) VALUES (%s, %s) "
                                        "ON CONFLICT (version) DO UPDATE SET doc = excluded.doc",
                                        (int(version), text)), "add a validation point")

    def val_curve(self) -> list[Doc]:
        return [json.loads(r[0]) for r in self._read("SELECT doc FROM val_curve ORDER BY version")]

    def add_traffic(self, counts: dict[str, int]) -> None:
        rows = [(str(k), int(v)) for k, v in counts.items() if v]
        if rows:
            self._write(lambda c: c.executemany(
                "INSERT INTO traffic (name, count) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET count = traffic.count + excluded.count", rows), "add traffic")

    def traffic(self) -> dict[str, int]:
        return {name: int(n) for name, n in self._read("SELECT name, count FROM traffic")}

    # ------------------------------------------------------------------ merge tasks
    def claim_merge_task(self, owner: str, now: float, lease_s: float) -> Doc | None:
        def claim(cur: psycopg.Cursor) -> Doc | None:
            # SKIP LOCKED: a task another claimer is taking right now is passed over, never waited on or shared.
            row = cur.execute(
                "UPDATE merge_tasks SET status = 'claimed', owner = %s, until = %s, attempt = attempt + 1 "
                "WHERE (job_id, shard, phase) = (SELECT job_id, shard, phase FROM merge_tasks "
                "  WHERE status <> 'done' AND (status = 'pending' OR until <= %s) "
                "  ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) "
                "RETURNING job_id, shard, phase, spec, attempt", (owner, now + lease_s, now)).fetchone()
            if row is None:
                return None
            job, shard, phase, spec, attempt = row
            return {"job_id": job, "shard": shard, "phase": phase, "spec": json.loads(spec), "attempt": attempt}

        return self._write(claim, "claim a merge task")

    def finish_merge_task(self, job_id: str, shard: int, phase: str, owner: str, result: Doc) -> bool:
        text = dumps(result)
        return self._write(lambda c: c.execute(
            "UPDATE merge_tasks SET status = 'done', result = %s "
            "WHERE job_id = %s AND shard = %s AND phase = %s AND status = 'claimed' AND owner = %s",
            (text, job_id, int(shard), phase, owner)).rowcount == 1, "finish a merge task")

    def release_merge_task(self, job_id: str, shard: int, phase: str, owner: str) -> bool:
        return self._write(lambda c: c.execute(
            "UPDATE merge_tasks SET status = 'pending', owner = NULL "
            "WHERE job_id = %s AND shard = %s AND phase = %s AND status = 'claimed' AND owner = %s",
            (job_id, int(shard), phase, owner)).rowcount == 1, "release a merge task")

    def merge_tasks(self, job_id: str) -> list[Doc]:
        rows = self._read("SELECT job_id, shard, phase, spec, status, owner, result FROM merge_tasks "
                          "WHERE job_id = %s ORDER BY seq", (job_id,))
        return [{"job_id": j, "shard": s, "phase": p, "spec": json.loads(spec), "status": st, "owner": o,
                 "result": None if r is None else json.loads(r)} for j, s, p, spec, st, o, r in rows]

    def drop_merge_tasks(self, job_id: str) -> int:
        return self._write(lambda c: c.execute("DELETE FROM merge_tasks WHERE job_id = %s", (job_id,)).rowcount,
                           "drop a job's merge tasks")

    # ------------------------------------------------------------------ health
    def health_check(self) -> None:
        self._write(lambda c: c.execute("UPDATE health SET n = n + 1, time = %s WHERE id = 1", (time.time(),)),
                    "write the health row")

    def close(self) -> None:
        self.release_writer()
        self._closed = True
        for session in (self._w, self._r):
            with session.lock:
                session.drop()
