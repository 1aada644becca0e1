"""Range reads of an update (protocol/wire_range.py): only the hash blocks a slice needs are fetched, each is
verified against the signed header before use, and a tampered block or header is refused."""

from __future__ import annotations

import pytest
import torch

from trainnet.protocol.wire import (
    HASH_BLOCK,
    PREFIX,
    WireFormatError,
    WireLimits,
    decode_update,
    encode_update,
)
from trainnet.protocol.wire import header_sha256 as header_digest
from trainnet.protocol.wire_range import RangeMessage

LIMITS = WireLimits()
BIG = 700_000  # float32 elements: 2.8 MB, three hash blocks


class Reader:
    """A blob's ranged reads, counted."""

    def __init__(self, data: bytes) -> None:
        self.data, self.calls, self.bytes = data, 0, 0

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls += 1
        out = self.data[offset:offset + length]
        self.bytes += len(out)
        return out


def _message(codec: str = "fp32", big: int = BIG) -> tuple[bytes, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    tensors = {"small": torch.randn(3, 100, generator=g), "big": torch.randn(big, generator=g),
               "tail": torch.randn(5000, generator=g)}
    data = encode_update(tensors, codec, run_id="r", node_id="n", task_id="t", base_version=2)
    return data, decode_update(data).tensors


def _open(data: bytes, signed: bytes | None = None) -> tuple[RangeMessage, Reader]:
    reader = Reader(data)
    return RangeMessage.open(reader, len(data), LIMITS, header_sha256=header_digest(signed or data)), reader


def test_a_slice_fetches_only_the_blocks_that_cover_it():
    data, full = _message()
    msg, reader = _open(data)
    head = reader.bytes
    x = msg.tensor_range(msg.entry("big"), 300_000, 300_010)  # inside the second hash block
    assert torch.equal(x, full["big"][300_000:300_010])
    assert reader.bytes - head == HASH_BLOCK and len(data) > 2.5 * HASH_BLOCK
    y = msg.tensor_range(msg.entry("big"), 300_010, 300_020)  # the same block again: from the verified cache
    assert torch.equal(y, full["big"][300_010:300_020]) and reader.bytes - head == HASH_BLOCK


def test_walking_a_tensor_chunk_by_chunk_reads_every_byte_once():
    data, full = _message()
    msg, reader = _open(data)
    head = reader.bytes
    e = msg.entry("big")
    parts = [msg.tensor_range(e, a, min(a + 65_536, BIG)) for a in range(0, BIG, 65_536)]
    assert torch.equal(torch.cat(parts), full["big"])
    assert reader.bytes - head == 4 * BIG == msg.bytes_read - head


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8", "q4", "q2", "sign", "topk:0.1+q4", "dct64:top8"])
def test_every_codec_decodes_the_same_values_by_range(codec):
    data, full = _message(codec, big=20_000)
    msg, _ = _open(data)
    for name, lo, hi in [("small", 0, 300), ("small", 17, 211), ("big", 63, 65), ("big", 1000, 19_999),
                         ("tail", 4990, 5000), ("big", 5, 5)]:
        got = msg.tensor_range(msg.entry(name), lo, hi)
        assert torch.equal(got, full[name].reshape(-1)[lo:hi]), (codec, name, lo, hi)


def test_a_tampered_block_is_refused_and_the_others_still_read():
    data, full = _message()
    msg, _ = _open(data)
    e = msg.entry("big")
    part = e.parts[0]
    at = msg.payload_offset + part.offset + HASH_BLOCK + 123  # a byte in hash block 1 of "big"
    bad = bytearray(data)
    bad[at] ^= 0x01
    msg, _ = _open(bytes(bad), signed=data)  # the header is intact: it opens
    assert torch.equal(msg.tensor_range(e, 0, 1000), full["big"][:1000])              # block 0: fine
    with pytest.raises(WireFormatError, match="block 1 does not match its sha256"):
        msg.tensor_range(e, 262_144, 262_200)                                         # block 1: refused
    assert torch.equal(msg.tensor_range(e, BIG - 10, BIG), full["big"][-10:])        # block 2: fine


def test_a_tampered_or_foreign_header_is_refused():
    data, _ = _message(big=1000)
    bad = bytearray(data)
    bad[PREFIX.size + 30] ^= 0x01
    with pytest.raises(WireFormatError, match="header sha256"):
        _open(bytes(bad), signed=data)
    other, _ = _message("fp16", big=1000)
    with pytest.raises(WireFormatError, match="header sha256"):
        _open(other, signed=data)


def test_sizes_are_checked_before_any_payload_is_read():
    data, _ = _message(big=1000)
    reader = Reader(data[:-8])
    with pytest.raises(WireFormatError):
        RangeMessage.open(reader, len(data) - 8, LIMITS, header_sha256=header_digest(data))
    assert reader.bytes < len(data) - 8 - 1000 * 4  # the header only
    msg, _ = _open(data)
    with pytest.raises(WireFormatError, match="outside"):
        msg.tensor_range(msg.entry("big"), 990, 1001)
    with pytest.raises(WireFormatError, match="no tensor"):
        msg.entry("nope")


def test_read_ahead_turns_a_small_updates_part_reads_into_one_request():
    """Against an object store every range read is a request: a small update (many small tensors) read part by
    part cost one request per part per pass; the aggregator's read-ahead window fetches it in one, and the
    decoded values (hash-checked as before) are the same."""
    from trainnet.aggregate.updates import ReadAhead
    from trainnet.store.blob_memory import MemoryBlobStore

    g = torch.Generator().manual_seed(3)
    tensors = {f"w{i}": torch.randn(64, 32, generator=g) for i in range(24)}
    data = encode_update(tensors, "q4", run_id="r", node_id="n", task_id="t", base_version=0)
    expect = decode_update(data).tensors
    direct = Reader(data)
    msg = RangeMessage.open(direct, len(data), LIMITS)
    for name in tensors:
        msg.tensor_range(msg.entry(name), 0, 64 * 32)
    assert direct.calls >= 2 + 24  # prefix, header, then at least one read per tensor

    blobs = MemoryBlobStore()
    blobs.put("updates/u.tnup", data)
    ahead = ReadAhead(blobs, "updates/u.tnup", len(data))
    msg = RangeMessage.open(ahead, len(data), LIMITS)
    for name in tensors:
        got = msg.tensor_range(msg.entry(name), 0, 64 * 32)
        assert torch.equal(got, expect[name].reshape(-1))
    assert ahead.requests == 1 and len(data) < (1 << 20)
