"""StoreUnavailable per SQL backend: the store refuses a write cleanly, applies nothing, and recovers.

    PYTHONPATH=$PWD/src python -m pytest -q tests/store/test_state_unavailable.py

SQLite: a full disk, simulated with `PRAGMA max_page_count` on the store's write connection (SQLITE_FULL).
PostgreSQL: a terminated session, a read-only database, and a writer whose lock session died.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainnet.store import state_postgres
from trainnet.store.state import Changes, Fenced, StoreUnavailable, WriterLocked, open_state_store
from trainnet.store.state_sqlite import SqliteStateStore


def _big(tag: str) -> Changes:
    return Changes(meta={"tag": tag}, docs={"nodes": {f"n{i}": {"pad": "x" * 1000} for i in range(100)}},
                   logs={"updates": {"u1": {"tag": tag}}}, events=[{"time": 1.0, "kind": "k", "data": {"tag": tag}}],
                   merge_tasks=[{"job_id": "j", "shard": 0, "phase": "reduce", "spec": {}}])


def test_sqlite_full_disk_refuses_then_recovers(tmp_path: Path) -> None:
    s = SqliteStateStore(tmp_path / "state.db")
    try:
        fence = s.acquire_writer("t")
        s.commit(Changes(meta={"tag": "small"}, docs={"nodes": {"a": {}}}), fence)
        before = s.load_state()
        # The test reaches into the write connection: max_page_count is a per-connection limit.
        pages = s._conn.execute("PRAGMA page_count").fetchone()[0]
        s._conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreUnavailable, match="full"):
            s.commit(_big("big"), fence)
        assert s.load_state() == before and s.events_since() == [] and s.log_count("updates") == 0
        assert s.merge_tasks("j") == []
        s._conn.execute("PRAGMA max_page_count = 1073741823")  # space is back
        s.health_check()
        s.commit(_big("big"), fence)
        state = s.load_state()
        assert state["meta"] == {"tag": "big"} and len(state["docs"]["nodes"]) == 101
        assert [e["id"] for e in s.events_since()] == [1]
    finally:
        s.close()


def test_postgres_missing_psycopg_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_postgres, "psycopg", None)
    with pytest.raises(ImportError, match=r"pip install 'trainnet\[postgres\]'"):
        state_postgres.PostgresStateStore("postgresql://nobody@127.0.0.1:1/none")


def _terminate(admin: object, db: str, *names: str) -> None:
    """End the store's sessions by name (application_name) and wait until they are gone (up to 10 s)."""
    admin.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "  # type: ignore[attr-defined]
                  "WHERE datname = %s AND application_name = ANY(%s)", (db, list(names)))


def test_postgres_lost_session_and_read_only(pg_server: str, pg_url: str) -> None:
    import psycopg

    db = pg_url.rsplit("/", 1)[1]
    s = open_state_store(pg_url)
    admin = psycopg.connect(f"{pg_server}/postgres", autocommit=True)
    try:
        fence = s.acquire_writer("t")
        s.commit(Changes(meta={"tag": "first"}), fence)
        # A terminated session: this call fails cleanly, the next one connects again.
        _terminate(admin, db, "trainnet-state-write")
        with pytest.raises(StoreUnavailable, match="refused to commit"):
            s.commit(_big("lost"), fence)
        assert s.load_state() == {"meta": {"tag": "first"}, "docs": {}}
        s.commit(Changes(meta={"tag": "second"}), fence)
        # A read-only database: every write is refused until it is writable again.
        admin.execute(f"ALTER DATABASE {db} SET default_transaction_read_only = on")
        _terminate(admin, db, "trainnet-state-write")
        for _ in range(2):  # the first sees the terminated session, the second the read-only default
            with pytest.raises(StoreUnavailable):
                s.commit(_big("read-only"), fence)
        with pytest.raises(StoreUnavailable, match="read-only"):
            s.health_check()
        admin.execute(f"ALTER DATABASE {db} RESET default_transaction_read_only")
        s.health_check()
        assert s.load_state() == {"meta": {"tag": "second"}, "docs": {}} and s.events_since() == []
        s.commit(_big("third"), fence)
        assert s.load_state()["meta"] == {"tag": "third"} and [e["id"] for e in s.events_since()] == [1]
    finally:
        admin.close()
        s.close()


def test_postgres_dead_lock_session_frees_the_run_and_fences_the_old_writer(pg_server: str, pg_url: str) -> None:
    import psycopg

    db = pg_url.rsplit("/", 1)[1]
    old, new = open_state_store(pg_url), open_state_store(pg_url)
    admin = psycopg.connect(f"{pg_server}/postgres", autocommit=True)
    try:
        old_fence = old.acquire_writer("old")
        with pytest.raises(WriterLocked, match="'old'"):
            new.acquire_writer("new")
        _terminate(admin, db, "trainnet-state-writer-lock")  # the old writer's lock session dies
        new_fence = new.acquire_writer("new")
        with pytest.raises(Fenced):
            old.commit(Changes(meta={"by": "old"}), old_fence)
        new.commit(Changes(meta={"by": "new"}), new_fence)
        assert old.load_state()["meta"] == {"by": "new"}
    finally:
        admin.close()
        old.close()
        new.close()


@pytest.mark.parametrize("applied", [True, False], ids=["reply-lost", "commit-lost"])
def test_postgres_connection_lost_at_commit_is_resolved(pg_url: str, monkeypatch: pytest.MonkeyPatch,
                                                          applied: bool) -> None:
    """A connection lost during COMMIT: the store asks the server whether the commit landed (its id in the
    writer row), so the caller sees success exactly when the commit applied and StoreUnavailable otherwise."""
    import psycopg

    s = open_state_store(pg_url)
    try:
        fence = s.acquire_writer("t")
        real_commit = psycopg.Connection.commit
        calls = {"n": 0}

        def flaky_commit(conn: psycopg.Connection) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                if applied:
                    real_commit(conn)  # the server committed; only the reply is lost
                raise psycopg.OperationalError("server closed the connection unexpectedly (simulated)")
            real_commit(conn)

        monkeypatch.setattr(psycopg.Connection, "commit", flaky_commit)
        change = Changes(meta={"v": 1}, events=[{"time": 1.0, "kind": "k", "data": {}}])
        if applied:
            s.commit(change, fence)
        else:
            with pytest.raises(StoreUnavailable, match="refused to commit"):
                s.commit(change, fence)
        monkeypatch.undo()
        assert s.load_state() == ({"meta": {"v": 1}, "docs": {}} if applied else None)
        assert len(s.events_since()) == int(applied)
    finally:
        s.close()
