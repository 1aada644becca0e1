"""An in-memory BlobStore: the simulator's default (bytes counted exactly, nothing touches the disk).

    blobs = MemoryBlobStore(); blobs.put("updates/x.tnup", data); blobs.get_range("updates/x.tnup", 0, 12)
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable

from trainnet.store.blobs import BlobNotFound, BlobStore, BlobTooLarge, check_key


class MemoryBlobStore(BlobStore):
    url = "memory:"

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.bytes_in = 0
        self.bytes_out = 0

    def put(self, key: str, data: bytes) -> str:
        check_key(key)
        data = bytes(data)
        with self._lock:
            self._data[key] = data
            self.bytes_in += len(data)
        return hashlib.sha256(data).hexdigest()

    def put_stream(self, key: str, chunks: Iterable[bytes], max_bytes: int) -> tuple[int, str]:
        check_key(key)
        parts, n, h = [], 0, hashlib.sha256()
        for c in chunks:
            n += len(c)
            if n > max_bytes:
                raise BlobTooLarge(f"{key}: more than {max_bytes} bytes")
            h.update(c)
            parts.append(bytes(c))
        data = b"".join(parts)
        with self._lock:
            self._data[key] = data
            self.bytes_in += n
        return n, h.hexdigest()

    def get(self, key: str) -> bytes:
        check_key(key)
        with self._lock:
            if key not in self._data:
                raise BlobNotFound(key)
            data = self._data[key]
            self.bytes_out += len(data)
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_key(key)
        with self._lock:
            if key not in self._data:
                raise BlobNotFound(key)
            data = self._data[key][start:start + length]
            self.bytes_out += len(data)
        return data

    def size(self, key: str) -> int | None:
        check_key(key)
        with self._lock:
            d = self._data.get(key)
        return None if d is None else len(d)

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._data.pop(key, None)

    def list(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in self._data if k.startswith(prefix))
