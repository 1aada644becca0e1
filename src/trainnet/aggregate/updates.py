"""An accepted update as an aggregator shard sees it: validated against what the node signed, read by range.

    u = OpenUpdate.open(blobs, spec_update, layout, limits, run_id)   # raises Invalid(reason, detail)
    x = u.flat(lo, hi)                                                # float32 elements [lo, hi) of its Δ

Every check here runs before a single tensor element is decoded: the blob exists with the signed size, its
header has the signed sha256, says what the lease said (run, node, task, base version, codec, tokens, steps,
residual commitments) and has exactly the model's tensors and shapes. Bytes read afterwards are verified
block by block (protocol/wire_range.py). An invalid update is left out of the merge with the reason as
evidence; its shard is trained again by someone else.
"""

from __future__ import annotations

from typing import Any

import torch

from trainnet.aggregate.layout import ParamLayout
from trainnet.protocol.wire import WireFormatError, WireLimits
from trainnet.protocol.wire_range import RangeMessage
from trainnet.store.blobs import BlobError, BlobNotFound, BlobStore


class Invalid(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class ReadAhead:
    """Range reads of one blob through a window of `window` bytes: the small reads of a merge (prefix, header,
    each tensor part's hash blocks, mostly in file order) become a few large ones. Against an object store every
    read is a request: a small model's update (tens of parts) cost tens of requests per pass without this, and a
    merge of ~100 buffered updates thousands. Memory: one window per open update (O(n x window)); a read as
    large as the window goes straight to the store. The bytes are still checked against their sha256 above."""

    def __init__(self, blobs: BlobStore, key: str, size: int, window: int = 1 << 20) -> None:
        self.blobs, self.key, self.size, self.window = blobs, key, size, window
        self.start, self.buf = 0, b""
        self.requests = 0

    def __call__(self, offset: int, length: int) -> bytes:
        if self.start <= offset and offset + length <= self.start + len(self.buf):
            return self.buf[offset - self.start:offset - self.start + length]
        self.requests += 1
        if length >= self.window:
            return self.blobs.get_range(self.key, offset, length)
        self.start = offset
        self.buf = self.blobs.get_range(self.key, offset, max(length, min(self.window, self.size - offset)))
        return self.buf[:length]


class OpenUpdate:
    def __init__(self, msg: RangeMessage, layout: ParamLayout, entries: dict[str, Any]) -> None:
        self.msg, self.layout, self.entries = msg, layout, entries

    @classmethod
    def open(cls, blobs: BlobStore, u: dict[str, Any], layout: ParamLayout, limits: WireLimits,
             run_id: str) -> OpenUpdate:
        key, size = u["blob"], int(u["nbytes"])
        # No HEAD request for the size: the stored size was checked against the signed one when the update was
        # accepted, and a shorter blob fails the hash check of the block it lacks (a longer one is never read).
        read = ReadAhead(blobs, key, size)
        try:
            msg = RangeMessage.open(read, size, limits, header_sha256=u.get("header_sha256") or None)
        except WireFormatError as exc:
            raise Invalid("bad_blob", str(exc)[:200]) from None
        except BlobNotFound:
            raise Invalid("blob_missing", key) from None
        except BlobError as exc:
            raise Invalid("blob_unreadable", str(exc)[:200]) from None
        h = msg.header
        want = {"run_id": run_id, "node_id": u["node_id"], "task_id": u["task_id"],
                "base_version": u["base_version"], "codec": u["codec"]}
        got = {"run_id": h.run_id, "node_id": h.node_id, "task_id": h.task_id, "base_version": h.base_version,
               "codec": h.codec}
        for k in ("tokens", "steps"):
            want[k], got[k] = u[k], h.extra.get(k)
        for k in ("ef_in", "ef_out"):
            if u.get(k):
                want[k], got[k] = u[k], h.extra.get(k)
        diff = sorted(k for k in want if want[k] != got[k])
        if diff:
            raise Invalid("header_mismatch", f"header fields {diff} differ from the signed metadata")
        entries = {e.name: e for e in h.tensors}
        if set(entries) != set(layout.names):
            missing, extra = set(layout.names) - set(entries), set(entries) - set(layout.names)
            raise Invalid("bad_shape", f"tensors missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}")
        for name, shape in zip(layout.names, layout.shapes, strict=True):
            if tuple(entries[name].shape) != tuple(shape):
                raise Invalid("bad_shape", f"{name}: shape {list(entries[name].shape)} != model {list(shape)}")
        return cls(msg, layout, entries)

    def flat(self, lo: int, hi: int) -> torch.Tensor:
        """Decoded elements [lo, hi) of the flat update (Invalid on bad bytes or non-finite values)."""
        out = torch.empty(hi - lo, dtype=torch.float32)
        try:
            for name, a, b, f in self.layout.pieces(lo, hi):
                out[f - lo:f - lo + (b - a)] = self.msg.tensor_range(self.entries[name], a, b)
        except WireFormatError as exc:
            raise Invalid("bad_blob", str(exc)[:200]) from None
        except (BlobError, OSError) as exc:
            raise Invalid("blob_unreadable", str(exc)[:200]) from None
        except ValueError as exc:  # a codec's own content check
            raise Invalid("bad_blob", str(exc)[:200]) from None
        if not bool(torch.isfinite(out).all()):
            raise Invalid("non_finite", f"NaN or inf in elements [{lo}, {hi})")
        return out
