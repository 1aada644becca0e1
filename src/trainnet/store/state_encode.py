"""Encode a `Changes` into the exact rows every StateStore backend writes, before any transaction starts.

    enc = encode_changes(changes)      # raises ValueError/TypeError on a document `dumps` refuses (NaN, a set)
    enc.meta, enc.upserts, enc.deletes, enc.logs, enc.events, enc.tasks

Encoding first is what makes "a document that cannot be stored fails the whole commit" hold in every backend:
nothing is written unless every document encoded. One helper keeps memory, SQLite and PostgreSQL byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainnet.store.state import Changes, dumps


@dataclass
class EncodedChanges:
    """Rows as (column values) tuples; documents as their `dumps` text."""

    meta: str | None = None
    upserts: list[tuple[str, str, str]] = field(default_factory=list)       # (collection, key, doc)
    deletes: list[tuple[str, str]] = field(default_factory=list)            # (collection, key)
    logs: list[tuple[str, str, str]] = field(default_factory=list)          # (kind, key, doc)
    events: list[tuple[float, str, str]] = field(default_factory=list)      # (time, kind, data)
    tasks: list[tuple[str, int, str, str]] = field(default_factory=list)    # (job_id, shard, phase, spec)


def encode_changes(changes: Changes) -> EncodedChanges:
    """Every row of `changes`, encoded; in the order a backend applies them (later rows of a key win)."""
    enc = EncodedChanges(meta=None if changes.meta is None else dumps(changes.meta))
    for coll, rows in changes.docs.items():
        for key, doc in rows.items():
            if doc is None:
                enc.deletes.append((str(coll), str(key)))
            else:
                enc.upserts.append((str(coll), str(key), dumps(doc)))
    for kind, rows in changes.logs.items():
        for key, doc in rows.items():
            enc.logs.append((str(kind), str(key), dumps(doc)))
    for e in changes.events:
        enc.events.append((float(e["time"]), str(e["kind"]), dumps(e["data"])))
    for t in changes.merge_tasks:
        enc.tasks.append((str(t["job_id"]), int(t["shard"]), str(t["phase"]), dumps(t["spec"])))
    return enc
