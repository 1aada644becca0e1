"""Read a slice of an update without fetching all of it: the header first, then only the hash blocks needed.

    reader = lambda offset, length: blobs.get_range(key, offset, length)
    msg = RangeMessage.open(reader, size=blobs.size(key), limits=limits, header_sha256=signed)  # checks the header
    x = msg.tensor_range(msg.entry("h.0.mlp.fc.weight"), 1000, 5000)   # float32, elements [1000, 5000)

Integrity: the header is authenticated by its sha256 (which the node signed with the update), and each part's
bytes by the per-`HASH_BLOCK` digests the header lists (wire format 2). A reader fetches whole hash blocks
around the bytes it needs, verifies them, and keeps the last verified block of each part, so walking a tensor
chunk by chunk fetches every byte once. Blockwise dense codecs (fp32/fp16/bf16, int8/q4/q2, sign) decode any
element range from the blocks that cover it; other codecs (top-k, DCT) decode the whole tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from trainnet.codec.base import PART_DTYPES, Codec
from trainnet.codec.codecs import DENSE_DEFAULT_BLOCK, DenseCodec
from trainnet.codec.values import FloatValues, QuantValues, SignValues
from trainnet.protocol.wire import (
    HASH_BLOCK,
    PREFIX,
    TensorEntry,
    WireFormatError,
    WireHeader,
    WireLimits,
    parse_header,
    parse_prefix,
)

Reader = Callable[[int, int], bytes]


def _element_geometry(codec: Codec, numel: int) -> tuple[int, list[tuple[str, float]]] | None:
    """(block, [(part name, bytes per block)]) for codecs whose parts can be cut at block boundaries, else None."""
    if not isinstance(codec, DenseCodec):
        return None
    v = codec.values
    if isinstance(v, FloatValues):
        return 1, [("v", v.dtype.itemsize)]
    if isinstance(v, QuantValues):
        block = v._block(DENSE_DEFAULT_BLOCK)
        if (block * v.bits) % 8:
            return None
        return block, [("q", block * v.bits // 8), ("scale", 2), ("offset", 2)]
    if isinstance(v, SignValues) and not v.per_tensor:
        block = v._block(numel, DENSE_DEFAULT_BLOCK)
        if block % 8:
            return None
        return block, [("sign", block // 8), ("scale", 2)]
    return None


@dataclass
class RangeMessage:
    read: Reader
    header: WireHeader
    codec: Codec
    payload_offset: int
    _cache: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    bytes_read: int = 0

    @classmethod
    def open(cls, read: Reader, size: int, limits: WireLimits, header_sha256: str | None = None) -> RangeMessage:
        """Fetch and validate the prefix and header of a `size`-byte message (and its sha256 if given)."""
        prefix = read(0, PREFIX.size)
        hlen = parse_prefix(prefix, size, limits)
        hbytes = read(PREFIX.size, hlen)
        if len(hbytes) != hlen:
            raise WireFormatError(f"message truncated: header is {len(hbytes)} of {hlen} bytes")
        if header_sha256 is not None and hashlib.sha256(prefix + hbytes).hexdigest() != header_sha256:
            raise WireFormatError("header sha256 does not match the signed header_sha256")
        header, codec = parse_header(hbytes, limits)
        if size != PREFIX.size + hlen + header.payload_bytes:
            raise WireFormatError(f"message is {size} bytes; prefix, header and payload add up to "
                                  f"{PREFIX.size + hlen + header.payload_bytes}")
        msg = cls(read, header, codec, PREFIX.size + hlen)
        msg.bytes_read = PREFIX.size + hlen
        return msg

    def entry(self, name: str) -> TensorEntry:
        for e in self.header.tensors:
            if e.name == name:
                return e
        raise WireFormatError(f"update has no tensor {name!r}")

    # ------------------------------------------------------------------ verified bytes
    def _part_bytes(self, e: TensorEntry, part: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of one part of tensor e, every covering hash block verified."""
        p = next(x for x in e.parts if x.name == part)
        if not 0 <= start <= end <= p.length:
            raise WireFormatError(f"{e.name}.{part}: range [{start}, {end}) outside the part ({p.length} bytes)")
        out = []
        pos = start
        while pos < end:
            b = pos // HASH_BLOCK
            blk = self._block(e, p, b)
            lo = pos - b * HASH_BLOCK
            hi = min(end - b * HASH_BLOCK, len(blk))
            out.append(blk[lo:hi])
            pos = b * HASH_BLOCK + hi
        return b"".join(out)

    def _block(self, e: TensorEntry, p, b: int) -> bytes:
        key = (e.name, p.name)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == b:
            return cached[1]
        lo = b * HASH_BLOCK
        n = min(HASH_BLOCK, p.length - lo)
        data = self.read(self.payload_offset + p.offset + lo, n)
        self.bytes_read += len(data)
        if len(data) != n or hashlib.sha256(data).hexdigest() != p.sha256[b]:
            raise WireFormatError(f"tensor {e.name!r}: part {p.name!r} block {b} does not match its sha256")
        self._cache[key] = (b, data)
        return data

    @staticmethod
    def _tensor(raw: bytes, dtype_name: str) -> torch.Tensor:
        dtype = PART_DTYPES[dtype_name]
        np_dtype = {torch.uint8: "<u1", torch.int16: "<i2", torch.float16: "<i2", torch.bfloat16: "<i2",
                    torch.float32: "<i4"}[dtype]
        arr = np.frombuffer(raw, dtype=np_dtype).astype(np.dtype(np_dtype).newbyteorder("="))
        return torch.from_numpy(arr).view(dtype)

    # ------------------------------------------------------------------ decoding
    def tensor_range(self, e: TensorEntry, lo: int, hi: int) -> torch.Tensor:
        """Decoded float32 elements [lo, hi) of the flattened tensor e."""
        if not 0 <= lo <= hi <= e.numel:
            raise WireFormatError(f"tensor {e.name!r}: element range [{lo}, {hi}) outside [0, {e.numel})")
        if lo == hi:
            return torch.zeros(0)
        geo = _element_geometry(self.codec, e.numel)
        if geo is None:  # not cut at blocks: the whole tensor, once per call
            return self._decode_parts(e, {p.name: (0, p.length) for p in e.parts}, e.numel).reshape(-1)[lo:hi]
        block, per_block = geo
        b0, b1 = lo // block, -(-hi // block)
        n_sub = min(b1 * block, e.numel) - b0 * block
        spans = {}
        for name, width in per_block:
            p = next(x for x in e.parts if x.name == name)
            start = int(b0 * width)
            end = min(p.length, int(b1 * width))
            spans[name] = (start, end)
        out = self._decode_parts(e, spans, n_sub)
        return out[lo - b0 * block:hi - b0 * block]

    def _decode_parts(self, e: TensorEntry, spans: dict[str, tuple[int, int]], n: int) -> torch.Tensor:
        parts = {p.name: self._tensor(self._part_bytes(e, p.name, *spans[p.name]), p.dtype) for p in e.parts}
        if isinstance(self.codec, DenseCodec):
            out = self.codec.values.decode(parts, n, DENSE_DEFAULT_BLOCK)
        else:
            from trainnet.codec.base import EncodedTensor

            enc = EncodedTensor(self.codec.spec, e.shape, parts, e.dtype)
            self.codec.validate(enc)
            out = self.codec.decode(enc, validate=False).reshape(-1)
        out = out.reshape(-1)
        if out.numel() != n:
            raise WireFormatError(f"tensor {e.name!r}: decoded {out.numel()} elements, expected {n}")
        return out
