"""Durable coordinator state: SQLite (WAL, synchronous=FULL) for rows, fsynced files for tensors.

    store = Store(state_dir)
    path = store.write_blob("updates/t0000001.ab12.tnup", wire_bytes)    # tmp + fsync + rename + dir fsync
    store.commit(meta=..., nodes=[...], leases=[...], events=[...], new_update={...},
                 merged=[("t0000001", 3)], new_version=(3, "checkpoints/v00000003.safetensors"),
                 outer_path="outer/v00000003.safetensors")
    snap = store.load()                                                   # None for a fresh store

Layout under state_dir: `coordinator.db`, `checkpoints/vNNNNNNNN.safetensors` (full fp32 parameters of
a model version), `outer/vNNNNNNNN.safetensors` (outer momentum after that version),
`updates/<task>.<rand>.tnup` (the raw signed upload bytes, evidence), `audits/<task>.<rand>.safetensors`
(error-feedback residuals a worker revealed for an audited task; kept as evidence when the audit
fails, deleted when it passes), `events.jsonl` (one JSON line per
committed core event: {"id", "time", "kind", "data"}; derived from the `events` table, appended after each
commit and caught up at startup). Blob paths in rows are relative. Observability tables: `energy` (per
accepted update, committed with it), `val_curve` (held-out loss per evaluated version), `traffic` (bytes).
Verification tables (see audits.py): `audits` (one row per audited task: spec, stored update, residual
commitments, reveal deadline and residual file; status pending / passed / failed / dropped with the
verifier's detail and the steps it recomputed) and `chain` (each node's last accepted ef_out).

Crash safety: blobs are made durable before the transaction that references them commits; one
transaction holds every row change of one coordinator step, so a crash leaves either the state
before or the state after that step. Unreferenced blobs (from a crash between the two) are
deleted by `cleanup_orphans()` at startup.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (node_id TEXT PRIMARY KEY, public_key TEXT NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (task_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, base_version INTEGER NOT NULL,
    deadline REAL NOT NULL, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS updates (seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL UNIQUE,
    node_id TEXT NOT NULL, base_version INTEGER NOT NULL, tokens INTEGER NOT NULL, steps INTEGER NOT NULL,
    loss REAL, staleness INTEGER NOT NULL, arrived REAL NOT NULL, signature TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL, nbytes INTEGER NOT NULL, path TEXT NOT NULL, merged_into INTEGER);
CREATE TABLE IF NOT EXISTS versions (version INTEGER PRIMARY KEY, path TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outer_state (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL,
    path TEXT);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, kind TEXT NOT NULL,
    data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS energy (task_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, joules REAL NOT NULL,
    measured INTEGER NOT NULL, source TEXT NOT NULL, task_s REAL);
CREATE TABLE IF NOT EXISTS val_curve (version INTEGER PRIMARY KEY, tokens INTEGER NOT NULL, val_loss REAL NOT NULL,
    time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS traffic (name TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audits (task_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, spec TEXT NOT NULL,
    accepted_at REAL NOT NULL, update_path TEXT NOT NULL, ef_in TEXT NOT NULL, ef_out TEXT NOT NULL,
    reveal_deadline REAL NOT NULL, residual_path TEXT, merged_into INTEGER, status TEXT NOT NULL,
    detail TEXT, finished REAL, steps INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS chain (node_id TEXT PRIMARY KEY, ef_out TEXT NOT NULL, task_id TEXT NOT NULL);
"""
AUDIT_COLS = ("task_id", "node_id", "spec", "accepted_at", "update_path", "ef_in", "ef_out", "reveal_deadline",
              "residual_path", "merged_into")

EVENT_LOG = "events.jsonl"

log = logging.getLogger("trainnet.coordinator")

DROPPED = -1  # merged_into of a buffered update dropped without merging (its node was banned)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        for sub in ("checkpoints", "outer", "updates", "audits", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.dir / "coordinator.db", isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._log_id = self._event_log_tail()
        self.sync_event_log()

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ event log (JSONL)
    def _event_log_tail(self) -> int:
        """Id of the last complete line of events.jsonl (0 if none), so a restart appends what is missing."""
        path = self.dir / EVENT_LOG
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 65536))
                lines = f.read().splitlines()
        except FileNotFoundError:
            return 0
        for line in reversed(lines):
            try:
                return int(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line (crash mid-append) is skipped; its event is written again
        return 0

    def sync_event_log(self) -> None:
        """Append committed events not yet in events.jsonl. Never raises: the log is derived data."""
        try:
            rows = self.db.execute("SELECT id, time, kind, data FROM events WHERE id > ? ORDER BY id",
                                   (self._log_id,)).fetchall()
            if not rows:
                return
            text = "".join(json.dumps({"id": i, "time": t, "kind": k, "data": json.loads(d)},
                                      separators=(",", ":")) + "\n" for i, t, k, d in rows)
            with open(self.dir / EVENT_LOG, "ab") as f:
                # A torn line left by a crash must not glue onto the next one.
                if f.tell() > 0 and not self._ends_with_newline():
                    f.write(b"\n")
                f.write(text.encode())
            self._log_id = rows[-1][0]
        except (OSError, sqlite3.Error, ValueError):
            log.warning("could not append to %s", self.dir / EVENT_LOG, exc_info=True)

    def _ends_with_newline(self) -> bool:
        with open(self.dir / EVENT_LOG, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    # ------------------------------------------------------------------ observability rows
    def add_val_point(self, version: int, tokens: int, val_loss: float, time: float) -> None:
        """Record a held-out evaluation (call under the service lock: one connection, no interleaving)."""
        self.db.execute("INSERT OR REPLACE INTO val_curve VALUES (?, ?, ?, ?)", (version, tokens, val_loss, time))

    def val_versions(self) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT version FROM val_curve")}

    def add_traffic(self, counts: dict[str, int]) -> None:
        """Add byte counts (e.g. {"model_full": n}) to the durable totals (call under the service lock)."""
        self.db.executemany("INSERT INTO traffic VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET bytes = bytes + ?",
                            [(k, int(v), int(v)) for k, v in counts.items() if v])

    # ------------------------------------------------------------------ blobs
    def write_blob(self, rel: str, data: bytes) -> str:
        """Write `data` to state_dir/rel durably and atomically; returns rel."""
        final = self.dir / rel
        tmp = self.dir / "tmp" / f"{final.name}.{secrets.token_hex(6)}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return rel

    def read_blob(self, rel: str) -> bytes:
        return (self.dir / rel).read_bytes()

    def delete_blob(self, rel: str) -> None:
        try:
            (self.dir / rel).unlink()
        except FileNotFoundError:
            pass

    def new_update_path(self) -> str:
        """A fresh server-chosen name for an upload: no client string ever names a file, and a replayed
        upload for the same task never overwrites the stored evidence."""
        return f"updates/{secrets.token_hex(16)}.tnup"

    # ------------------------------------------------------------------ rows
    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def has_update(self, task_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM updates WHERE task_id=?", (task_id,)).fetchone() is not None

    def commit(self, *, meta: dict[str, Any], nodes: list[dict[str, Any]], leases: list[dict[str, Any]],
               events: list[dict[str, Any]], new_update: dict[str, Any] | None = None,
               merged: list[tuple[str, int]] = (), new_version: tuple[int, str, float] | None = None,
               outer_path: str | None = None, outer_version: int | None = None,
               audits: list[dict[str, Any]] = (), audits_done: list[dict[str, Any]] = (),
               chain: list[tuple[str, str, str]] = ()) -> None:
        """One atomic step: every row change of one coordinator step, in one transaction.

        `audits`: pending audit rows (AUDIT_COLS, written whole); `audits_done`: {"task_id", "status",
        "detail", "finished", "steps", "residual_path"} closing a pending row; `chain`: (node_id, ef_out,
        task_id) of nodes whose commitment chain advanced."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in meta.items()])
            db.executemany("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?)",
                           [(n["node_id"], n["public_key"], json.dumps(n)) for n in nodes])
            db.execute("DELETE FROM leases")
            db.executemany("INSERT INTO leases VALUES (?, ?, ?, ?, ?)",
                           [(lease["spec"]["task_id"], lease["spec"]["node_id"], lease["spec"]["base_version"],
                             lease["deadline"], json.dumps(lease["spec"])) for lease in leases])
            db.executemany("INSERT INTO events (time, kind, data) VALUES (?, ?, ?)",
                           [(e["time"], e["kind"], json.dumps(e["data"], default=str)) for e in events])
            if new_update is not None:
                u = new_update
                db.execute(
                    "INSERT INTO updates (task_id, node_id, base_version, tokens, steps, loss, staleness, arrived,"
                    " signature, payload_sha256, nbytes, path, merged_into) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL)",
                    (u["task_id"], u["node_id"], u["base_version"], u["tokens"], u["steps"], u["loss"],
                     u["staleness"], u["arrived"], u["signature"], u["payload_sha256"], u["nbytes"], u["path"]))
                e = u.get("energy")
                if e is not None:
                    db.execute("INSERT OR REPLACE INTO energy VALUES (?, ?, ?, ?, ?, ?)",
                               (u["task_id"], u["node_id"], e["joules"], int(e["measured"]), e["source"],
                                e.get("task_s")))
            db.executemany("UPDATE updates SET merged_into=? WHERE task_id=? AND merged_into IS NULL",
                           [(v, t) for t, v in merged])
            if new_version is not None:
                db.execute("INSERT OR REPLACE INTO versions VALUES (?, ?, ?)", new_version)
            if outer_path is not None or outer_version is not None:
                db.execute("INSERT OR REPLACE INTO outer_state VALUES (1, ?, ?)", (outer_version, outer_path))
            db.executemany(
                f"INSERT OR REPLACE INTO audits ({', '.join(AUDIT_COLS)}, status) VALUES "
                f"({', '.join('?' * len(AUDIT_COLS))}, 'pending')",
                [tuple(a[c] for c in AUDIT_COLS) for a in audits])
            db.executemany("UPDATE audits SET status=?, detail=?, finished=?, steps=?, residual_path=? WHERE task_id=?",
                           [(d["status"], json.dumps(d["detail"]), d["finished"], d["steps"], d["residual_path"],
                             d["task_id"]) for d in audits_done])
            db.executemany("INSERT OR REPLACE INTO chain VALUES (?, ?, ?)", list(chain))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if events:
            self.sync_event_log()

    def load(self) -> dict[str, Any] | None:
        """Everything needed to rebuild the coordinator, or None if nothing was ever committed."""
        db = self.db
        latest = db.execute("SELECT version, path FROM versions ORDER BY version DESC LIMIT 1").fetchone()
        if latest is None:
            return None
        meta = {k: json.loads(v) for k, v in db.execute("SELECT name, value FROM counters")}
        nodes = [json.loads(r[0]) for r in db.execute("SELECT record FROM nodes ORDER BY node_id")]
        leases = [{"spec": json.loads(s), "deadline": d}
                  for s, d in db.execute("SELECT spec, deadline FROM leases ORDER BY task_id")]
        cols = ("task_id", "node_id", "base_version", "tokens", "steps", "staleness", "arrived", "path")
        unmerged = [dict(zip(cols, r, strict=True)) for r in db.execute(
            f"SELECT {', '.join(cols)} FROM updates WHERE merged_into IS NULL ORDER BY seq")]
        outer = db.execute("SELECT version, path FROM outer_state WHERE id=1").fetchone()
        return {"meta": meta, "nodes": nodes, "leases": leases, "unmerged": unmerged,
                "version": latest[0], "checkpoint": latest[1],
                "outer": None if outer is None else {"version": outer[0], "path": outer[1]},
                **self.load_audits()}

    def load_audits(self) -> dict[str, Any]:
        """Pending audit rows (oldest first), the commitment chain and the verifier's total steps."""
        q = self.db.execute
        pending = [dict(zip(AUDIT_COLS, r, strict=True)) for r in q(
            f"SELECT {', '.join(AUDIT_COLS)} FROM audits WHERE status='pending' ORDER BY accepted_at, task_id")]
        chain = {n: (ef, t) for n, ef, t in q("SELECT node_id, ef_out, task_id FROM chain")}
        steps = q("SELECT COALESCE(SUM(steps), 0) FROM audits").fetchone()[0]
        return {"audits": pending, "chain": chain, "verify_steps": int(steps)}

    def audit_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent audit rows with their verdicts (newest first), for inspection and tests."""
        cols = ("task_id", "node_id", "status", "detail", "finished", "steps", "residual_path", "ef_in", "ef_out")
        return [dict(zip(cols, r, strict=True)) | {"detail": json.loads(r[3]) if r[3] else None}
                for r in self.db.execute(f"SELECT {', '.join(cols)} FROM audits ORDER BY accepted_at DESC "
                                         "LIMIT ?", (limit,))]

    def version_path(self, version: int) -> str | None:
        row = self.db.execute("SELECT path FROM versions WHERE version=?", (version,)).fetchone()
        return None if row is None else row[0]

    def versions(self) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT version FROM versions ORDER BY version")]

    def prune_versions(self, keep: set[int]) -> list[str]:
        """Drop checkpoint rows not in `keep` (committed first), then their files. Returns deleted paths."""
        doomed = [(v, p) for v, p in self.db.execute("SELECT version, path FROM versions") if v not in keep]
        if not doomed:
            return []
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("DELETE FROM versions WHERE version=?", [(v,) for v, _ in doomed])
        self.db.execute("COMMIT")
        for _, p in doomed:
            self.delete_blob(p)
        return [p for _, p in doomed]

    def cleanup_orphans(self) -> int:
        """Delete blob files no row references (left by a crash between blob write and commit)."""
        used = {r[0] for r in self.db.execute("SELECT path FROM versions")}
        used |= {r[0] for r in self.db.execute("SELECT path FROM updates")}
        used |= {r[0] for r in self.db.execute("SELECT path FROM outer_state WHERE path IS NOT NULL")}
        used |= {r[0] for r in self.db.execute("SELECT residual_path FROM audits WHERE residual_path IS NOT NULL")}
        n = 0
        for sub in ("checkpoints", "outer", "updates", "audits", "tmp"):
            for f in (self.dir / sub).iterdir():
                rel = f"{sub}/{f.name}"
                if rel not in used:
                    f.unlink()
                    n += 1
        return n

    def counts(self) -> dict[str, int]:
        q = self.db.execute
        return {
            "updates": q("SELECT COUNT(*) FROM updates").fetchone()[0],
            "unmerged": q("SELECT COUNT(*) FROM updates WHERE merged_into IS NULL").fetchone()[0],
            "versions": q("SELECT COUNT(*) FROM versions").fetchone()[0],
            "events": q("SELECT COUNT(*) FROM events").fetchone()[0],
            "audits": q("SELECT COUNT(*) FROM audits").fetchone()[0],
        }
