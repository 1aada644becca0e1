"""Dataset manifest: shard id -> content hash, and one root hash that names the whole dataset.

Tasks refer to shards by id *and* hash, so a worker or verifier holding different bytes for the
same id notices before training on them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ShardEntry:
    id: int
    sha256: str
    nbytes: int
    split: str  # "train" | "val"


@dataclass(frozen=True)
class Manifest:
    source: str
    shards: tuple[ShardEntry, ...]

    @property
    def root_hash(self) -> str:
        """sha256 over the ordered (id, hash, size, split) list: changes if any shard changes."""
        h = hashlib.sha256()
        for s in self.shards:
            h.update(f"{s.id}:{s.sha256}:{s.nbytes}:{s.split}\n".encode())
        return h.hexdigest()

    def entry(self, shard_id: int) -> ShardEntry:
        if not 0 <= shard_id < len(self.shards):
            raise KeyError(f"no shard {shard_id} in manifest (has {len(self.shards)})")
        return self.shards[shard_id]

    def ids(self, split: str) -> list[int]:
        return [s.id for s in self.shards if s.split == split]

    def to_json(self) -> str:
        return json.dumps(
            {"source": self.source, "root_hash": self.root_hash, "shards": [asdict(s) for s in self.shards]},
            indent=1,
        )
