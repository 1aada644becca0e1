"""Fixtures for the store suites: `blob_store` runs a test against every BlobStore backend.

    def test_x(blob_store): ...          # once on FsBlobStore(tmp_path), once on S3BlobStore over a real
                                          # S3-speaking server (moto, one subprocess per session, one bucket
                                          # per test); the s3 case is skipped when boto3 or moto is missing
    pending_writes(blob_store)            # temp files (fs) or unfinished multipart uploads (s3) left behind
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trainnet.store.blob_fs import FsBlobStore
from trainnet.store.blobs import BlobStore

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, for the shared `servers` package

from servers.s3 import S3Server, moto_s3_server  # noqa: E402

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
