"""Raw little-endian float32 arrays in blobs, read by element range and written chunk by chunk.

    x = read_f32(blobs, key, lo, hi)            # elements [lo, hi) of the array (one ranged read)
    with F32Sink(blobs, key) as sink:           # spooled to a temp file, stored with put_stream on close
        sink.write(chunk_tensor); ...
    sink.result                                 # {"key", "sha256", "nbytes"}
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import torch

from trainnet.store.blobs import BlobStore


def read_f32(blobs: BlobStore, key: str, lo: int, hi: int) -> torch.Tensor:
    if hi <= lo:
        return torch.zeros(0)
    raw = blobs.get_range(key, 4 * lo, 4 * (hi - lo))
    if len(raw) != 4 * (hi - lo):
        raise ValueError(f"{key}: expected {4 * (hi - lo)} bytes at element {lo}, got {len(raw)}")
    return torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32))


def f32_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()


def bf16_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype("<i2", copy=False).tobytes()


class Spool:
    """Bytes spooled to a temporary file, then stored under `key` with put_stream (bounded memory)."""

    def __init__(self, blobs: BlobStore, key: str, max_bytes: int = 1 << 40) -> None:
        self.blobs, self.key, self.max_bytes = blobs, key, max_bytes
        self.f = tempfile.TemporaryFile()
        self.result: dict[str, Any] | None = None

    def write(self, data: bytes) -> None:
        self.f.write(data)

    def close(self, head: bytes = b"") -> dict[str, Any]:
        def pieces():
            if head:
                yield head
            self.f.flush()
            self.f.seek(0)
            while piece := self.f.read(1 << 20):
                yield piece
        try:
            size, sha = self.blobs.put_stream(self.key, pieces(), self.max_bytes)
        finally:
            self.f.close()
        self.result = {"key": self.key, "sha256": sha, "nbytes": size}
        return self.result


class F32Sink(Spool):
    def write_tensor(self, t: torch.Tensor) -> None:
        self.write(f32_bytes(t))
