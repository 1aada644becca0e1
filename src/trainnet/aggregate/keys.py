"""Blob keys of the data plane (all chosen by TrainNet; see docs/STORAGE.md).

    updates/<task>-<tag>.tnup                 a worker's encoded update (core.Coordinator.upload_key)
    updates/accepted/<task>-<tag>.tnup        ...moved there by the coordinator when it was presigned (the
                                              worker could overwrite the first key until its URL expires)
    audits/<hex>.safetensors                  residuals a worker revealed for an audited task
    agg/r<shard>/v<version>.theta|.mom|.pub   an aggregator shard's exact parameters, outer momentum and the
                                              published reconstruction of its range, after that version
    pub/v<version>/delta-r<shard>.tnup        the published delta of a shard's range (wire format)
    pub/chunks/<sha256>                       content-addressed full-checkpoint chunks (bf16 or exact fp32)
    versions/v<version>.json                  the signed manifest of a published version
"""

from __future__ import annotations


def agg(shard: int, version: int, what: str) -> str:
    return f"agg/r{shard:03d}/v{version:08d}.{what}"


def delta(version: int, shard: int) -> str:
    return f"pub/v{version:08d}/delta-r{shard:03d}.tnup"


def chunk(sha256: str) -> str:
    return f"pub/chunks/{sha256}"


def manifest(version: int) -> str:
    return f"versions/v{version:08d}.json"


def accepted(upload_key: str) -> str:
    """Where a presigned upload is copied before it is submitted (a key only the coordinator writes)."""
    return upload_key.replace("updates/", "updates/accepted/", 1)
