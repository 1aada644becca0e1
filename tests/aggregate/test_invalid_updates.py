"""A damaged or dishonest update is found by the aggregator shards before any of it is merged: it is left out with
its reason as evidence, its data is trained again, and the merge still publishes from the others."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import replace

import pytest
import torch
from plane_kit import Plane, delta, plane_config, tiny_corpus

from trainnet.protocol.wire import FORMAT_VERSION, MAGIC, PREFIX, block_hashes, decode_header


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x5A
    return bytes(b)


# name -> (how the upload is made, the reason the merge records)
CASES = {
    # bytes changed after signing: the last tensor's payload block no longer matches its hash (only the last
    # aggregator shard reads that tensor: one shard's verdict is enough)
    "payload_byte": (lambda p, s, t, d: dict(data=d, stored=_flip(d, len(d) - 5)), "bad_blob"),
    # the stored header is not the one the node signed
    "header_sha": (lambda p, s, t, d: dict(data=d, header_sha256=hashlib.sha256(b"other").hexdigest()), "bad_blob"),
    "header_byte": (lambda p, s, t, d: dict(data=d, stored=_flip(d, 20)), "bad_blob"),
    # the header says other counts than the signed metadata and the lease
    "header_fields": (lambda p, s, t, d: dict(data=p.encode(s, t, tokens=s.tokens + 1)), "header_mismatch"),
    # another task's (valid) bytes replayed under this task
    "other_task": (lambda p, s, t, d: dict(data=p.encode(replace(s, task_id="t0000000"), t)), "header_mismatch"),
    "wrong_shapes": (lambda p, s, t, d: dict(data=p.encode(s, {k: v.reshape(-1) if v.dim() > 1 else v
                                                               for k, v in t.items()})), "bad_shape"),
    "missing_tensor": (lambda p, s, t, d: dict(data=p.encode(s, dict(list(t.items())[1:]))), "bad_shape"),
    "truncated": (lambda p, s, t, d: dict(data=d, stored=d[:-64]), "bad_blob"),          # shorter than signed
    "truncated_signed": (lambda p, s, t, d: dict(data=d[:-64]), "bad_blob"),             # signed as truncated
    "missing_blob": (lambda p, s, t, d: dict(data=d, store=False), "blob_missing"),
    "nan": (lambda p, s, t, d: dict(data=_with_nan(d)), "non_finite"),
}


def _with_nan(data: bytes) -> bytes:
    """A well-formed fp32 message (hashes and all: what a malicious node can sign) with a NaN in its last
    tensor; the codecs refuse to encode one, so the bytes are edited and the header's hashes recomputed."""
    hlen = PREFIX.unpack_from(data)[3]
    header = json.loads(data[PREFIX.size:PREFIX.size + hlen])
    payload = bytearray(data[PREFIX.size + hlen:])
    part = header["tensors"][-1]["parts"][0]
    at = part["offset"] + 4 * 3
    payload[at:at + 4] = struct.pack("<f", float("nan"))
    part["sha256"] = block_hashes(bytes(payload[part["offset"]:part["offset"] + part["length"]]))
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(hbytes)) + hbytes + bytes(payload)


def test_the_nan_message_is_otherwise_well_formed():
    from trainnet.protocol.wire import encode_update
    data = _with_nan(encode_update({"a": torch.ones(4), "b": torch.ones(8)}, "fp32"))
    assert decode_header(data).tensors[-1].numel == 8  # hashes check out: only the value is wrong


_CLEAN: list[torch.Tensor] = []


def _without_the_bad_one(make_tiny_config) -> torch.Tensor:
    """Version 1 of the same run where n1 never uploaded (quorum 2: n0's and n2's updates), made once."""
    if not _CLEAN:
        q = Plane(plane_config(make_tiny_config, **{"sim.codec": '"fp32"', "consensus.quorum": 2}), tiny_corpus(),
                  shards=2)
        q.join("n0", "n1", "n2")
        specs = [q.lease(n) for n in ("n0", "n1", "n2")]
        for spec in (specs[0], specs[2]):
            q.upload(spec, delta(q.layout, seed=int(spec.task_id[1:])))
        q.drain()
        _CLEAN.append(q.shard_arrays(1, "theta"))
    return _CLEAN[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_update_is_excluded_with_its_reason_and_the_merge_publishes(make_tiny_config, case):
    make, reason = CASES[case]
    p = Plane(plane_config(make_tiny_config, **{"sim.codec": '"fp32"', "consensus.quorum": 3}), tiny_corpus(),
              shards=2)
    p.join("n0", "n1", "n2")
    specs = [p.lease(n) for n in ("n0", "n1", "n2")]
    good = {}
    for spec in specs:
        tensors = delta(p.layout, seed=int(spec.task_id[1:]))
        if spec.node_id == "n1":
            data = p.encode(spec, tensors)
            reply = p.upload(spec, **make(p, spec, tensors, data))
        else:
            reply = p.upload(spec, tensors)
            good[spec.task_id] = p.layout.flatten(tensors)
        assert reply.accepted, reply  # the engine takes metadata only: the bytes are checked by the data plane
    p.drain()
    bad = specs[1]
    assert p.core.version == 1 and p.core.updates_merged == 2
    log = p.state.log_get("updates", bad.task_id)
    assert log["merged_into"] == -1 and log["dropped"] == reason
    assert p.state.log_get("versions", "v00000001")["updates"] == 2
    ev = p.core.nodes["n1"].evidence[-1]
    assert ev["task_id"] == bad.task_id and ev["reason"] == reason and ev["detail"]
    assert not p.core.nodes["n1"].banned and p.core.tokens_accepted == 2 * bad.tokens
    # the version is the merge of the two good updates alone: the same as a run that never saw the bad one
    assert torch.equal(p.shard_arrays(1, "theta"), _without_the_bad_one(make_tiny_config))
    # its data goes back to the queue
    again = p.lease("n1")
    assert (again.shard_id, again.seed) == (bad.shard_id, bad.seed)
