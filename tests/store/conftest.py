"""Fixtures for the state store conformance suite: one throwaway PostgreSQL server per session, a fresh
database per test, and `state_store` / `store_url` parametrized over memory, sqlite and postgres.

    def test_x(state_store): ...            # runs three times, once per backend
    def test_y(store_url, new_store): ...   # store_url opens the same data again; new_store() opens a fresh one

Where PostgreSQL (initdb, pg_ctl) or psycopg is missing, the postgres parameter is skipped and the reason
printed at the end of the run.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for servers.postgres
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/store/, for store_child

from servers.postgres import find_pg_bin, postgres_server  # noqa: E402
from trainnet.store.state import StateStore, open_state_store  # noqa: E402

BACKENDS = ["memory", "sqlite", "postgres"]
_skipped: list[str] = []
_db_ids = itertools.count(1)


def _postgres_missing() -> str | None:
    if find_pg_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql (.ci/system-deps)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 is not installed: pip install -e '.[postgres]'"
    return None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Base URL of a throwaway PostgreSQL server for the whole session (skips the test when unavailable)."""
    reason = _postgres_missing()
    if reason:
        if reason not in _skipped:
            _skipped.append(reason)
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_new_db(pg_server: str) -> Callable[[], str]:
    """new() creates a fresh database on the session server and returns its URL."""
    import psycopg

    def new() -> str:
        name = f"t{next(_db_ids)}"
        with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"{pg_server}/{name}"

    return new


@pytest.fixture
def pg_url(pg_new_db: Callable[[], str]) -> str:
    """A fresh database of its own for this test."""
    return pg_new_db()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], StateStore]]:
    """new_store() opens a fresh, empty store of this test's backend (closed at the end of the test)."""
    opened: list[StateStore] = []
    new_db = request.getfixturevalue("pg_new_db") if backend == "postgres" else None
    counter = itertools.count()

    def new() -> StateStore:
        if backend == "memory":
            url = "memory:"
        elif backend == "sqlite":
            url = f"sqlite:///{tmp_path}/state{next(counter)}.db"
        else:
            assert new_db is not None
            url = new_db()
        store = open_state_store(url)
        opened.append(store)
        return store

    yield new
    for store in opened:
        store.close()


@pytest.fixture
def state_store(new_store: Callable[[], StateStore]) -> StateStore:
    """A fresh store of each backend in turn."""
    return new_store()


@pytest.fixture
def store_url(state_store: StateStore) -> str:
    """The URL of `state_store`; another process can open the same data with it (not for memory)."""
    if state_store.url == "memory:":
        pytest.skip("an in-memory store lives in one process")
    return state_store.url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for reason in _skipped:
        terminalreporter.write_line(f"state store suite: postgres backend skipped: {reason}", yellow=True)
