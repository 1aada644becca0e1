"""The three codec shapes: dense values, top-k per chunk, and top-k of DCT-II coefficients per chunk.

    DenseCodec(QuantValues(4))                       # "q4"
    TopKCodec(0.015, 4096, QuantValues(2))          # "topk:0.015+q2"
    DCTCodec(64, 4, SignValues())                    # "dct64:top4+sign"  (DeMo, arXiv:2411.19870)

Sparse codecs sort the kept in-chunk offsets ascending and bit-pack them with ceil(log2(chunk)) bits each;
the values that go with them are stored chunk-major by the value codec, whose default block is k (one
scale, and offset, per chunk).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from trainnet.codec.base import Codec, PartSpec
from trainnet.codec.bits import pack_bits, packed_len, unpack_bits
from trainnet.codec.values import ValueCodec

DENSE_DEFAULT_BLOCK = 64


class DenseCodec(Codec):
    """Every element stored by a value codec (fp32/fp16/bf16/int8/q4/q2/sign)."""

    def __init__(self, values: ValueCodec) -> None:
        self.values = values
        self.spec = values.spec
        self.lossless = values.lossless
        self.encode_rejects_nonfinite = values.rejects_nonfinite

    def layout(self, numel: int) -> list[PartSpec]:
        return self.values.layout(numel, DENSE_DEFAULT_BLOCK)

    def _encode_flat(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.values.encode(x, DENSE_DEFAULT_BLOCK)

    def _decode_flat(self, parts: dict[str, torch.Tensor], numel: int) -> torch.Tensor:
        return self.values.decode(parts, numel, DENSE_DEFAULT_BLOCK)

    def _check_parts(self, parts: dict[str, torch.Tensor], numel: int) -> None:
        self.values.check(parts, numel, DENSE_DEFAULT_BLOCK)

    def _decodes_finite(self, parts: dict[str, torch.Tensor]) -> bool:
        return self.values.decodes_finite(parts)


def index_width(chunk: int) -> int:
    """Bits per packed in-chunk offset: ceil(log2(chunk)), at least 1."""
    return max(1, (chunk - 1).bit_length())


class _ChunkTopK(Codec):
    """Shared machinery: view the (transformed) tensor as (nchunks, chunk), keep k entries per chunk."""

    values: ValueCodec

    def geometry(self, numel: int) -> tuple[int, int, int]:
        """(chunk, nchunks, k) for a tensor of `numel` elements."""
        raise NotImplementedError

    def layout(self, numel: int) -> list[PartSpec]:
        chunk, nchunks, k = self.geometry(numel)
        idx = PartSpec("idx", torch.uint8, packed_len(nchunks * k, index_width(chunk)))
        return [idx, *self.values.layout(nchunks * k, max(k, 1))]

    def _to_chunks(self, x: torch.Tensor, chunk: int, nchunks: int) -> torch.Tensor:
        pad = nchunks * chunk - x.numel()
        if pad:
            x = torch.cat([x, x.new_zeros(pad)])
        return x.view(nchunks, chunk)

    def _select(self, rows: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        chunk = rows.shape[1]
        idx = torch.topk(rows.abs(), k, dim=1, sorted=False).indices.sort(dim=1).values
        vals = torch.gather(rows, 1, idx)
        parts = {"idx": pack_bits(idx.reshape(-1), index_width(chunk))}
        parts.update(self.values.encode(vals.reshape(-1), max(k, 1)))
        return parts

    def _scatter(self, parts: dict[str, torch.Tensor], chunk: int, nchunks: int, k: int) -> torch.Tensor:
        idx = unpack_bits(parts["idx"], index_width(chunk), nchunks * k).view(nchunks, k)
        vals = self.values.decode(parts, nchunks * k, max(k, 1)).view(nchunks, k)
        out = torch.zeros(nchunks, chunk, device=vals.device)
        return out.scatter_(1, idx, vals)

    def _check_parts(self, parts: dict[str, torch.Tensor], numel: int) -> None:
        chunk, nchunks, k = self.geometry(numel)
        idx = unpack_bits(parts["idx"], index_width(chunk), nchunks * k).view(nchunks, k)
        if idx.numel() and int(idx.max()) >= chunk:
            raise ValueError(f"codec {self.spec!r}: index out of range (>= chunk {chunk})")
        if k > 1 and not (idx[:, 1:] > idx[:, :-1]).all():
            raise ValueError(f"codec {self.spec!r}: indices within a chunk must be strictly increasing")
        self.values.check(parts, nchunks * k, max(k, 1))


class TopKCodec(_ChunkTopK):
    """Keep the k = ceil(fraction * chunk - 1e-9) largest-magnitude entries of each chunk of the flat tensor."""

    def __init__(self, fraction: float, chunk: int, values: ValueCodec, spec: str) -> None:
        self.fraction, self.chunk, self.values, self.spec = fraction, chunk, values, spec

    def geometry(self, numel: int) -> tuple[int, int, int]:
        # Tensors smaller than a chunk are one chunk of their own size.
        chunk = max(1, min(self.chunk, numel))
        nchunks = -(-numel // chunk)
        k = min(chunk, max(1, math.ceil(self.fraction * chunk - 1e-9)))
        return chunk, nchunks, k

    def _encode_flat(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        chunk, nchunks, k = self.geometry(x.numel())
        return self._select(self._to_chunks(x, chunk, nchunks), k)

    def _decode_flat(self, parts: dict[str, torch.Tensor], numel: int) -> torch.Tensor:
        chunk, nchunks, k = self.geometry(numel)
        return self._scatter(parts, chunk, nchunks, k).reshape(-1)[:numel]


@lru_cache(maxsize=16)
def _dct_matrix_cpu(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(torch.float32)


def dct_matrix(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n x n): coefficients c = D @ x, inverse x = D.T @ c."""
    return _dct_matrix_cpu(n).to(device)


class DCTCodec(_ChunkTopK):
    """DeMo-style: DCT-II of each length-n chunk (zero-padded tail), keep the top-k coefficients."""

    def __init__(self, n: int, k: int, values: ValueCodec, spec: str) -> None:
        self.n, self.k, self.values, self.spec = n, k, values, spec

    def geometry(self, numel: int) -> tuple[int, int, int]:
        return self.n, -(-numel // self.n), self.k

    def _encode_flat(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        chunk, nchunks, k = self.geometry(x.numel())
        rows = self._to_chunks(x, chunk, nchunks)
        # Row-vector form of c = D @ x for every chunk at once: one (nchunks x n) @ (n x n) matmul.
        return self._select(rows @ dct_matrix(self.n, x.device).T, k)

    def _decode_flat(self, parts: dict[str, torch.Tensor], numel: int) -> torch.Tensor:
        chunk, nchunks, k = self.geometry(numel)
        coef = self._scatter(parts, chunk, nchunks, k)
        return (coef @ dct_matrix(self.n, coef.device)).reshape(-1)[:numel]
