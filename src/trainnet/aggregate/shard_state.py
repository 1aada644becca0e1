"""An aggregator shard's state of a version (exact parameters, outer momentum, published reconstruction), checked
against the checksums written beside it, with a fallback to the last good state when a file is corrupt.

    write_sums(blobs, shard, version, {"theta": res, "mom": res, "pub": res})   # after a version's state
    src = load_sources(blobs, spec, rebuild_pub)    # which blobs the apply phase reads for version_from
    src.theta, src.mom (None: zeros), src.pub; src.recovered   # e.g. ["theta <- pub (checksum mismatch)"]

A flipped byte or a truncated file under agg/ must neither stop the run nor train on silently corrupted
weights. Fallbacks, in order: the exact parameters θ_v, else the published reconstruction θ̃_v (what every
worker holds; it differs from θ_v by the publication rounding only), else θ_{v-1} (the previous version's
state, which the pruner keeps: one outer step is lost); momentum falls back to zeros; a corrupt θ̃_v is rebuilt
from the signed version manifests (their blobs are checked by sha256). Verifying costs one sequential read of
the shard's state per merge; state written before checksums existed is checked by size only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainnet.aggregate import keys
from trainnet.aggregate.arrays import f32_bytes, read_f32
from trainnet.store.blobs import BlobError, BlobStore

log = logging.getLogger("trainnet.aggregate")
PIECE = 1 << 22
WHAT = ("theta", "mom", "pub")


def write_sums(blobs: BlobStore, shard: int, version: int, results: dict[str, dict[str, Any]]) -> None:
    doc = {w: {"sha256": r["sha256"], "nbytes": r["nbytes"]} for w, r in results.items()}
    blobs.put(keys.agg(shard, version, "sums"), json.dumps(doc, sort_keys=True).encode())


def read_sums(blobs: BlobStore, shard: int, version: int) -> dict[str, Any] | None:
    """The checksums of a version's shard state; None when there are none (older state) or they are unreadable."""
    try:
        doc = json.loads(blobs.get(keys.agg(shard, version, "sums")))
    except (BlobError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


KEEP_MAX = 16 << 20  # a verified blob up to this size is kept in memory for the apply phase (one read, not two)


def intact(blobs: BlobStore, key: str, nbytes: int, want: dict[str, Any] | None,
           keep: dict[str, bytes] | None = None) -> bool:
    """The blob has `nbytes` bytes and (when checksums exist) the recorded sha256; read in 4 MB pieces. With
    `keep`, a small verified blob's bytes go there (each read is a request to an object store)."""
    try:
        if want is None:
            return blobs.size(key) == nbytes
        if want.get("nbytes") != nbytes:
            return False
        h, got, pieces = hashlib.sha256(), 0, []
        for off in range(0, nbytes, PIECE):
            piece = blobs.get_range(key, off, min(PIECE, nbytes - off))
            h.update(piece)
            got += len(piece)
            if keep is not None and nbytes <= KEEP_MAX:
                pieces.append(piece)
    except (BlobError, OSError):
        return False
    if got != nbytes or h.hexdigest() != want.get("sha256"):
        return False
    if pieces:
        keep[key] = b"".join(pieces)
    return True


@dataclass
class Sources:
    theta: str
    mom: str | None  # None: the momentum restarts from zeros
    pub: str | None  # None: no usable published state (the version is then published exactly, in full)
    recovered: list[str] = field(default_factory=list)
    data: dict[str, bytes] = field(default_factory=dict)  # key -> bytes of the small blobs verified above

    def read(self, blobs: BlobStore, key: str, lo: int, hi: int) -> torch.Tensor:
        """Elements [lo, hi) of a float32 state array: from the verified bytes when kept, else a ranged read."""
        raw = self.data.get(key)
        if raw is None:
            return read_f32(blobs, key, lo, hi)
        return torch.from_numpy(np.frombuffer(raw, dtype="<f4", count=hi - lo, offset=4 * lo).astype(np.float32))


def load_sources(blobs: BlobStore, spec: dict[str, Any], rebuild_pub: Callable[[], torch.Tensor] | None) -> Sources:
    """Which blobs hold the shard's verified state of version_from (see the module docstring).
    Raises LookupError when no usable parameters are left."""
    shard, v, nbytes = spec["shard"], spec["version_from"], 4 * (spec["hi"] - spec["lo"])
    sums = read_sums(blobs, shard, v)
    want = {w: None if sums is None else sums.get(w) for w in WHAT}
    key = {w: keys.agg(shard, v, w) for w in WHAT}
    data: dict[str, bytes] = {}
    ok = {w: intact(blobs, key[w], nbytes, want[w], data) for w in WHAT}
    recovered: list[str] = []
    if not ok["pub"] and rebuild_pub is not None:
        try:
            raw = f32_bytes(rebuild_pub())
            if len(raw) == nbytes:
                blobs.put(key["pub"], raw)
                want["pub"] = {"sha256": hashlib.sha256(raw).hexdigest(), "nbytes": nbytes}
                write_sums(blobs, shard, v, {w: d for w, d in want.items() if d})
                ok["pub"] = True
                recovered.append("pub <- signed version manifests")
        except Exception as exc:  # the published chain is unreadable too
            log.error("shard %d: cannot rebuild the published state of version %d: %s", shard, v, exc)
    theta = key["theta"]
    if not ok["theta"]:
        prev, prev_sums = keys.agg(shard, v - 1, "theta"), read_sums(blobs, shard, v - 1) or {}
        if ok["pub"]:
            theta = key["pub"]
            recovered.append("theta <- published reconstruction")
        elif v > 0 and prev_sums.get("theta") and intact(blobs, prev, nbytes, prev_sums["theta"]):
            theta = prev
            recovered.append(f"theta <- version {v - 1} (the last good state; one outer step is lost)")
        else:
            raise LookupError(f"shard {shard}: no intact parameters of version {v} or {v - 1} (theta, pub)")
    if not ok["mom"]:
        recovered.append("momentum <- zeros")
    if not ok["pub"]:
        recovered.append("no published state: this version is published exactly, in full")
    if recovered:
        log.warning("shard %d, version %d: state corrupt or missing: %s", shard, v, "; ".join(recovered))
    return Sources(theta, key["mom"] if ok["mom"] else None, key["pub"] if ok["pub"] else None, recovered, data)
