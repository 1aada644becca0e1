"""The BlobStore interface: immutable-ish bytes by key (updates, published versions, aggregator state).

    blobs = open_blob_store("file:///var/trainnet/blobs")   # or a plain path; or "s3://bucket/prefix"
    sha = blobs.put("updates/3f9c.tnup", data)               # durable and atomic before it returns
    size, sha = blobs.put_stream("updates/3f9c.tnup", chunks, max_bytes=1 << 30)
    blobs.get(key); blobs.get_range(key, start, length); blobs.size(key)   # size: None when absent
    url = blobs.presign_put(key, expires_s=900, content_length=n)    # None on the filesystem backend
    url = blobs.presign_get(key, expires_s=900)                      # None on the filesystem backend

Keys are chosen by TrainNet, never by a client: lowercase letters, digits, '.', '_', '-' in '/'-separated
segments (KEY_RE); `check_key` refuses anything else before a backend sees it. Backends: `fs` (the default;
blob_fs.py) and `s3` (any S3-compatible store through boto3, configured by the standard AWS environment
variables including AWS_ENDPOINT_URL; blob_s3.py). Both pass one conformance suite (tests/store/).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable
from pathlib import Path

KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")
MAX_KEY = 512
PREFIX_RE = re.compile(r"^([a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*/?)?$")


class BlobError(Exception):
    """Base class of blob store errors."""


class BadKey(BlobError, ValueError):
    """A key that does not match KEY_RE (or contains '..')."""


class BlobNotFound(BlobError, KeyError):
    """No blob under that key."""


class BlobTooLarge(BlobError, ValueError):
    """A streamed blob grew past its max_bytes; nothing was stored."""


class BlobUnavailable(BlobError, OSError):
    """The backend cannot be reached or refused to write (disk full, network, permissions)."""


def check_key(key: str) -> str:
    if not isinstance(key, str) or len(key) > MAX_KEY or ".." in key or not KEY_RE.match(key):
        raise BadKey(f"blob key must match {KEY_RE.pattern} (at most {MAX_KEY} chars, no '..'): {str(key)[:80]!r}")
    return key


def check_prefix(prefix: str) -> str:
    """`list(prefix)`'s argument: "" or the start of a key ("updates/", "versions/00"); BadKey otherwise."""
    if not isinstance(prefix, str) or len(prefix) > MAX_KEY or ".." in prefix or not PREFIX_RE.match(prefix):
        raise BadKey(f"blob prefix must be empty or the start of a key ({PREFIX_RE.pattern}): {str(prefix)[:80]!r}")
    return prefix


class BlobStore(abc.ABC):
    """Bytes by key. Writes are atomic (a reader sees the whole blob or none) and durable on return."""

    url: str

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> str:
        """Store `data` under `key` (replacing any old blob); returns its sha256 hex."""

    @abc.abstractmethod
    def put_stream(self, key: str, chunks: Iterable[bytes], max_bytes: int) -> tuple[int, str]:
        """Store the concatenated chunks without holding them all in memory; returns (size, sha256 hex).
        Raises BlobTooLarge (and stores nothing) once more than max_bytes arrive."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The whole blob; BlobNotFound if absent."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from offset `start` (fewer only at the end of the blob); BlobNotFound if absent."""

    @abc.abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when there is no such blob."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob; no error when it is already gone."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys that start with `prefix`, sorted."""

    def copy(self, src: str, dst: str) -> None:
        """Copy a blob to another key (object stores copy server-side: the bytes never leave the store)."""
        self.put(dst, self.get(src))

    def presign_put(self, key: str, expires_s: int, content_length: int | None = None) -> str | None:
        """A URL a client can PUT this blob to directly (None: the backend has none; upload through the
        coordinator instead)."""
        return None

    def presign_get(self, key: str, expires_s: int) -> str | None:
        """A URL a client can GET this blob from directly (None: fetch it through the coordinator)."""
        return None

    def local_path(self, key: str) -> Path | None:
        """The file holding the blob, for zero-copy serving (filesystem backend only)."""
        return None

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release connections."""


def open_blob_store(url: str | Path) -> BlobStore:
    """`file:///abs/path`, a plain path (filesystem backend), `s3://bucket/prefix` (S3 backend) or `memory:`."""
    text = str(url)
    if text == "memory:":
        from trainnet.store.blob_memory import MemoryBlobStore

        return MemoryBlobStore()
    if text.startswith("s3://"):
        from trainnet.store.blob_s3 import S3BlobStore

        return S3BlobStore.from_url(text)
    from trainnet.store.blob_fs import FsBlobStore

    return FsBlobStore(Path(text[len("file://"):] if text.startswith("file://") else text))
