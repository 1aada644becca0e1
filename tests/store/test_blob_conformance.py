"""The BlobStore contract, run against every backend (the `blob_store` fixture: fs, and s3 over moto)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import httpx
import pytest

from trainnet.store.blob_fs import FsBlobStore
from trainnet.store.blobs import BadKey, BlobNotFound, BlobStore, BlobTooLarge

# just over two 5 MiB parts: the s3 backend goes through a real multipart upload with a short last part
STREAM_BYTES = 11 * (1 << 20) + 12_345
DATA = random.Random(0).randbytes(STREAM_BYTES)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunked(data: bytes, seed: int = 1) -> Iterator[bytes]:
    """`data` in many chunks of uneven sizes (1 byte .. 192 KiB), so no chunk lines up with a part."""
    rng, pos = random.Random(seed), 0
    while pos < len(data):
        n = rng.randint(1, 192 * 1024)
        yield data[pos:pos + n]
        pos += n


def test_put_get_overwrite(blob_store: BlobStore) -> None:
    assert blob_store.put("updates/a.tnup", b"first") == sha(b"first")
    assert blob_store.get("updates/a.tnup") == b"first"
    assert blob_store.size("updates/a.tnup") == 5
    assert blob_store.put("updates/a.tnup", b"second, longer") == sha(b"second, longer")
    assert blob_store.get("updates/a.tnup") == b"second, longer"
    assert blob_store.size("updates/a.tnup") == 14


def test_empty_blob(blob_store: BlobStore) -> None:
    blob_store.put("e", b"")
    assert blob_store.get("e") == b"" and blob_store.size("e") == 0
    assert blob_store.put_stream("f", iter([]), max_bytes=0) == (0, sha(b""))
    assert blob_store.get("f") == b""


def test_put_stream_many_chunks(blob_store: BlobStore) -> None:
    size, digest = blob_store.put_stream("versions/v000001.st", chunked(DATA), max_bytes=STREAM_BYTES)
    assert (size, digest) == (STREAM_BYTES, sha(DATA))
    assert blob_store.size("versions/v000001.st") == STREAM_BYTES
    assert blob_store.get("versions/v000001.st") == DATA


def test_put_stream_small_blob(blob_store: BlobStore) -> None:
    data = b"x" * 1000
    assert blob_store.put_stream("agg/s", chunked(data), max_bytes=1000) == (1000, sha(data))
    assert blob_store.get("agg/s") == data


def test_max_bytes_refusal_stores_nothing(blob_store: BlobStore, pending_writes) -> None:
    with pytest.raises(BlobTooLarge, match="max_bytes"):
        # past the first part on s3, so a started multipart upload has to be aborted
        blob_store.put_stream("updates/big.tnup", chunked(DATA), max_bytes=6 << 20)
    assert blob_store.size("updates/big.tnup") is None
    assert blob_store.list() == []
    assert pending_writes(blob_store) == []


def test_refused_overwrite_keeps_old_blob(blob_store: BlobStore, pending_writes) -> None:
    blob_store.put("k", b"old")
    with pytest.raises(BlobTooLarge):
        blob_store.put_stream("k", [b"12345", b"6"], max_bytes=5)
    assert blob_store.get("k") == b"old"
    assert pending_writes(blob_store) == []


def test_failing_source_stores_nothing(blob_store: BlobStore, pending_writes) -> None:
    def source() -> Iterator[bytes]:
        yield from chunked(DATA[: 7 << 20])
        raise ConnectionResetError("client went away")  # e.g. an upload body cut off mid-way

    with pytest.raises(ConnectionResetError):
        blob_store.put_stream("updates/cut.tnup", source(), max_bytes=STREAM_BYTES)
    assert blob_store.size("updates/cut.tnup") is None
    assert pending_writes(blob_store) == []


def test_reader_never_sees_a_partial_blob(blob_store: BlobStore) -> None:
    old = b"o" * 1000
    blob_store.put("versions/latest", old)
    seen: list[bytes] = []

    def source() -> Iterator[bytes]:
        for i, chunk in enumerate(chunked(DATA)):
            if i % 20 == 10:  # while the new blob is half written, readers still get the old one whole
                seen.append(blob_store.get("versions/latest"))
                assert blob_store.size("versions/latest") == len(old)
            yield chunk

    blob_store.put_stream("versions/latest", source(), max_bytes=STREAM_BYTES)
    assert seen and all(s == old for s in seen)
    assert blob_store.get("versions/latest") == DATA


def test_get_range(blob_store: BlobStore) -> None:
    data = bytes(range(256)) * 4
    blob_store.put("r", data)
    assert blob_store.get_range("r", 0, 10) == data[:10]
    assert blob_store.get_range("r", 500, 100) == data[500:600]
    assert blob_store.get_range("r", 1000, 24) == data[1000:]
    assert blob_store.get_range("r", 1000, 500) == data[1000:]  # fewer bytes only at the end
    assert blob_store.get_range("r", 1024, 10) == b""  # starting at the end
    assert blob_store.get_range("r", 5000, 10) == b""  # past it
    assert blob_store.get_range("r", 3, 0) == b""
    with pytest.raises(ValueError):
        blob_store.get_range("r", -1, 10)
    with pytest.raises(ValueError):
        blob_store.get_range("r", 0, -1)


def test_get_range_of_large_streamed_blob(blob_store: BlobStore) -> None:
    blob_store.put_stream("big", chunked(DATA), max_bytes=STREAM_BYTES)
    mid = (5 << 20) - 100  # across the s3 part boundary
    assert blob_store.get_range("big", mid, 300) == DATA[mid:mid + 300]
    assert blob_store.get_range("big", STREAM_BYTES - 7, 100) == DATA[-7:]


def test_absent_key(blob_store: BlobStore) -> None:
    assert blob_store.size("nothing/here") is None
    with pytest.raises(BlobNotFound):
        blob_store.get("nothing/here")
    with pytest.raises(BlobNotFound):
        blob_store.get_range("nothing/here", 0, 10)
    with pytest.raises(BlobNotFound):
        blob_store.get_range("nothing/here", 0, 0)


def test_delete_is_idempotent(blob_store: BlobStore) -> None:
    blob_store.delete("never/existed")
    blob_store.put("updates/d.tnup", b"x")
    blob_store.delete("updates/d.tnup")
    assert blob_store.size("updates/d.tnup") is None
    blob_store.delete("updates/d.tnup")
    assert blob_store.list() == []


def test_list_with_prefixes(blob_store: BlobStore) -> None:
    keys = ["updates/b.tnup", "updates/a.tnup", "versions/v000002.st", "versions/v000010.st", "agg/r0/m.st",
            "updatesx"]
    for key in keys:
        blob_store.put(key, key.encode())
    assert blob_store.list() == sorted(keys)
    assert blob_store.list("updates/") == ["updates/a.tnup", "updates/b.tnup"]
    assert blob_store.list("updates") == ["updates/a.tnup", "updates/b.tnup", "updatesx"]
    assert blob_store.list("versions/v00001") == ["versions/v000010.st"]
    assert blob_store.list("agg/") == ["agg/r0/m.st"]
    assert blob_store.list("nothing/") == []
    blob_store.delete("agg/r0/m.st")
    assert blob_store.list("agg/") == []
    for bad in ["/updates", "../", "Updates/", "a//"]:
        with pytest.raises(BadKey):
            blob_store.list(bad)


BAD_KEYS = ["../x", "a/../b", "/abs", "A", "a//b", "a/./b", "./a", "a/", "", "a" * 513, "a b", "ü", None, 7,
            b"bytes"]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_refused(blob_store: BlobStore, key: object) -> None:
    calls = [
        lambda k: blob_store.put(k, b"x"),
        lambda k: blob_store.put_stream(k, [b"x"], max_bytes=10),
        lambda k: blob_store.get(k),
        lambda k: blob_store.get_range(k, 0, 1),
        lambda k: blob_store.get_range(k, 0, 0),
        lambda k: blob_store.size(k),
        lambda k: blob_store.delete(k),
        lambda k: blob_store.presign_put(k, 60, 1),
        lambda k: blob_store.presign_get(k, 60),
    ]
    for call in calls:
        with pytest.raises(BadKey):
            call(key)
    assert blob_store.list() == []


def test_longest_key_accepted(blob_store: BlobStore) -> None:
    key = "/".join(["a" * 100] * 5) + "/" + "b" * 7  # 512 characters
    assert len(key) == 512
    blob_store.put(key, b"deep")
    assert blob_store.get(key) == b"deep" and blob_store.list("aaa") == [key]


def test_presigned_put_then_get(blob_store: BlobStore) -> None:
    data = b"update bytes " * 1000
    put_url = blob_store.presign_put("updates/p.tnup", expires_s=300, content_length=len(data))
    get_url = blob_store.presign_get("updates/p.tnup", expires_s=300)
    if isinstance(blob_store, FsBlobStore):
        assert put_url is None and get_url is None  # uploads go through the coordinator instead
        return
    assert put_url and get_url
    # the size is part of the signature: a real store refuses any other body (moto does not check)
    assert "content-length" in httpx.URL(put_url).params["X-Amz-SignedHeaders"]
    with httpx.Client(timeout=10.0) as http:  # a plain client: no AWS credentials, no boto3
        assert http.put(put_url, content=data).status_code == 200
        assert blob_store.get("updates/p.tnup") == data
        got = http.get(get_url)
        assert got.status_code == 200 and got.content == data
        part = http.get(get_url, headers={"Range": "bytes=13-25"})
        assert part.status_code == 206 and part.content == data[13:26]


def test_presign_expiry_bounds(blob_store: BlobStore) -> None:
    if isinstance(blob_store, FsBlobStore):
        assert blob_store.presign_get("k", 0) is None
        return
    for bad in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="expires_s"):
            blob_store.presign_get("k", bad)
