"""Filesystem-only BlobStore behaviour: atomic renames under concurrent readers, disk-full and permission
errors, symlinks that lead out of the root, temp-file cleanup, zero-copy paths."""

from __future__ import annotations

import errno
import os
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainnet.store.blob_fs import FsBlobStore
from trainnet.store.blobs import BadKey, BlobNotFound, BlobUnavailable, open_blob_store


@pytest.fixture
def store(tmp_path: Path) -> FsBlobStore:
    return FsBlobStore(tmp_path / "blobs")


def chunks(byte: bytes, size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    for pos in range(0, size, chunk):
        yield byte * min(chunk, size - pos)


def test_concurrent_reader_sees_whole_blobs_only(store: FsBlobStore) -> None:
    a, b = b"a" * 3_000_000, b"b" * 2_000_000
    store.put("versions/latest", a)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(8):
                byte, size = (b"b", len(b)) if i % 2 == 0 else (b"a", len(a))
                store.put_stream("versions/latest", chunks(byte, size), max_bytes=len(a))
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads == 0:  # stops when the writer does (bounded: 8 writes)
        got = store.get("versions/latest")
        assert got == a or got == b, f"partial read of {len(got)} bytes"
        reads += 1
    thread.join(timeout=60)
    assert not errors and reads > 0
    assert store.get("versions/latest") == a


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("failing", ["write", "fsync", "open", "replace"])
def test_os_write_errors_become_unavailable(store: FsBlobStore, monkeypatch: pytest.MonkeyPatch,
                                            code: int, failing: str) -> None:
    """A full disk (and its cousins) is simulated by making one OS call fail: no tmpfs mount needed."""
    store.put("updates/old.tnup", b"old")
    real = getattr(os, failing)
    calls = {"n": 0}

    def fail_later(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] >= 2 or failing != "write":  # for write: let the first chunk land, fail the second
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, failing, fail_later)
        with pytest.raises(BlobUnavailable, match=errno.errorcode[code]) as info:
            store.put_stream("updates/old.tnup", chunks(b"n", 300_000), max_bytes=1 << 20)
        with pytest.raises(BlobUnavailable, match=errno.errorcode[code]):
            store.put("updates/new.tnup", b"new")
    assert str(store.root) in str(info.value) and "updates/old.tnup" in str(info.value)
    assert store.get("updates/old.tnup") == b"old"
    assert store.size("updates/new.tnup") is None
    assert list(store.tmp.iterdir()) == []


def test_writes_are_fsynced(store: FsBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store.put("a/b/c", b"x")
    # the file, each new folder's parent (root, a) and the final folder (a/b)
    assert synced.count(False) == 1 and synced.count(True) == 3
    synced.clear()
    store.put("a/b/c", b"y")
    assert synced == [False, True]


def test_stream_memory_stays_bounded(store: FsBlobStore) -> None:
    size = 32 << 20
    tracemalloc.start()
    try:
        store.put_stream("big", chunks(b"z", size), max_bytes=size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"put_stream held {peak} bytes for a {size}-byte blob"
    assert store.size("big") == size


def test_symlink_out_of_root_refused(store: FsBlobStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (store.root / "updates").symlink_to(outside, target_is_directory=True)
    (store.root / "evil").symlink_to(outside / "secret")
    for key in ("updates/secret", "updates/new", "evil"):
        with pytest.raises(BadKey, match="outside the store root"):
            store.get(key)
        with pytest.raises(BadKey):
            store.put(key, b"x")
        with pytest.raises(BadKey):
            store.delete(key)
    assert (outside / "secret").read_bytes() == b"secret" and sorted(os.listdir(outside)) == ["secret"]
    assert store.list() == []  # symlinks are not blobs


def test_symlink_inside_root_is_followed(store: FsBlobStore) -> None:
    store.put("real/x", b"1")
    (store.root / "alias").symlink_to(store.root / "real", target_is_directory=True)
    assert store.get("alias/x") == b"1"


def test_cleanup_tmp(store: FsBlobStore) -> None:
    old = store.tmp / "0123456789abcdef.part"
    old.write_bytes(b"half a blob")
    os.utime(old, (1, 1))
    fresh = store.tmp / "fedcba9876543210.part"
    fresh.write_bytes(b"being written")
    assert store.cleanup_tmp(older_than_s=3600) == 1 and fresh.exists() and not old.exists()
    assert store.cleanup_tmp() == 1 and list(store.tmp.iterdir()) == []
    assert store.list() == []


def test_local_path(store: FsBlobStore) -> None:
    store.put("versions/v1.st", b"weights")
    path = store.local_path("versions/v1.st")
    assert path.read_bytes() == b"weights" and path.is_relative_to(store.root)
    with open(path, "rb") as f:
        store.put("versions/v1.st", b"new weights")  # an open handle keeps the old, complete blob
        assert f.read() == b"weights"
    with pytest.raises(BlobNotFound):
        store.local_path("versions/none")


def test_blob_and_folder_of_same_name(store: FsBlobStore) -> None:
    store.put("a", b"1")
    with pytest.raises(BadKey, match="is a blob, not a folder"):
        store.put("a/b", b"2")
    store.delete("a")
    store.put("a/b", b"2")
    assert store.size("a") is None
    with pytest.raises(BlobNotFound):
        store.get("a")
    with pytest.raises(BadKey, match="folder"):
        store.put("a", b"3")
    store.delete("a")  # a folder, not a blob: nothing happens
    assert store.get("a/b") == b"2"


def test_delete_prunes_empty_folders_inside_root_only(store: FsBlobStore) -> None:
    store.put("agg/r0/x", b"1")
    store.put("agg/r1/y", b"2")
    store.delete("agg/r0/x")
    assert not (store.root / "agg/r0").exists() and (store.root / "agg/r1/y").exists()
    store.delete("agg/r1/y")
    assert not (store.root / "agg").exists()
    assert store.root.is_dir() and store.tmp.is_dir()
    store.put("top", b"t")
    store.delete("top")
    assert store.root.is_dir()


def test_open_blob_store_fs(tmp_path: Path) -> None:
    by_uri = open_blob_store(f"file://{tmp_path}/b1")
    by_path = open_blob_store(tmp_path / "b2")
    assert isinstance(by_uri, FsBlobStore) and by_uri.root == (tmp_path / "b1").resolve()
    assert isinstance(by_path, FsBlobStore) and by_path.url == (tmp_path / "b2").resolve().as_uri()


def test_unwritable_root_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(BlobUnavailable, match="cannot create"):
        FsBlobStore(tmp_path / "file" / "blobs")
