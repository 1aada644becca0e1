"""Fixtures for the store suites: `blob_store` runs a test against every BlobStore backend.

    def test_x(blob_store): ...          # once on FsBlobStore(tmp_path), once on S3BlobStore over a real
                                          # S3-speaking server (moto, one subprocess per session, one bucket
                                          # per test); the s3 case is skipped when boto3 or moto is missing
    pending_writes(blob_store)            # temp files (fs) or unfinished multipart uploads (s3) left behind

State stores: one throwaway PostgreSQL server per session, a fresh database per test, and
`state_store` / `store_url` parametrized over memory, sqlite and postgres.

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

from trainnet.store.blob_fs import FsBlobStore
from trainnet.store.blobs import BlobStore

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/store/, for store_child

from trainnet.devservers.postgres import find_pg_bin, postgres_server  # noqa: E402
from trainnet.devservers.s3 import S3Server, moto_s3_server  # noqa: E402
from trainnet.store.state import StateStore, open_state_store  # noqa: E402

# smallest part S3 accepts, so the conformance suite reaches multipart uploads with ~11 MiB blobs
S3_TEST_PART_SIZE = 5 << 20
_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    with moto_s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def boto_session(s3_server: S3Server):
    """One boto3 Session for the whole run: building a client from a warm session takes milliseconds, from
    a new one ~0.2 s (it loads the S3 service model)."""
    import boto3

    return boto3.session.Session()


@pytest.fixture(scope="session")
def s3_admin(s3_server: S3Server, boto_session):
    """A boto3 client with the test server's credentials, for setting up buckets and inspecting them."""
    client = boto_session.client("s3", **s3_server.client_kwargs())
    yield client
    client.close()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """The AWS_* environment pointing at the test server, and nothing of this machine's AWS setup."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "TRAINNET_S3_PATH_STYLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Server, s3_admin) -> str:
    """A fresh, empty bucket on the test server."""
    name = f"tn-test-{next(_bucket_numbers):04d}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["fs", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "fs":
        store: BlobStore = FsBlobStore(tmp_path / "blobs")
    else:
        from trainnet.store.blob_s3 import S3BlobStore

        bucket = request.getfixturevalue("s3_bucket")
        # configured the way an operator would: a URL plus the standard AWS environment variables
        store = S3BlobStore.from_url(f"s3://{bucket}/run1", part_size=S3_TEST_PART_SIZE, max_attempts=2,
                                     session=request.getfixturevalue("boto_session"))
    yield store
    store.close()


@pytest.fixture
def pending_writes() -> Callable[[BlobStore], list[str]]:
    """pending_writes(store): what interrupted writes left behind: temp files (fs), unfinished multipart
    uploads (s3)."""
    return _pending_writes


def _pending_writes(store: BlobStore) -> list[str]:
    if isinstance(store, FsBlobStore):
        return sorted(p.name for p in store.tmp.iterdir())
    from trainnet.store.blob_s3 import S3BlobStore

    assert isinstance(store, S3BlobStore)
    uploads = store._client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return sorted(u["Key"] for u in uploads)


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
