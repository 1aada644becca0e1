"""Where a run's state lives: a `StateStore` for rows (the control plane's state, logs, merge tasks) and a
`BlobStore` for bytes (updates, published model versions, aggregator state). Each has an embedded default
(SQLite / the local filesystem) and a backend for running at scale (PostgreSQL / any S3-compatible store).

    state = open_state_store("sqlite:///path/coordinator.db")      # or "postgresql://user@host/db", "memory:"
    blobs = open_blob_store("file:///path/blobs")                   # or "s3://bucket/prefix"
"""

from trainnet.store.blobs import BlobStore, open_blob_store
from trainnet.store.state import Changes, StateStore, open_state_store

__all__ = ["BlobStore", "Changes", "StateStore", "open_blob_store", "open_state_store"]
