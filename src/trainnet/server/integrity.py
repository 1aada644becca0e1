"""Can the latest published version be rebuilt from the blob store? Checked at start and after every new
version; when it cannot (a truncated or corrupt manifest, delta or checkpoint chunk), it is published again.

    check = Integrity(svc); check.step()     # the coordinator's housekeeping duty, off the request path

What a fresh worker downloads is checked the way it would check it: every manifest on the chain from the last
full checkpoint to the latest version (signature by this coordinator's key) and every blob they list (size and
sha256, read in 4 MB pieces: memory does not grow with the model). A blob is hashed once per process. When the
chain is broken, the engine publishes the aggregators' state of the latest version again, exactly and in full,
as the next version (core/merging.py, "republish"); the aggregators fall back to the last good state of their
own when that is corrupt too (aggregate/shard_state.py). So a corrupted latest version never stops a run.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from trainnet.aggregate import keys
from trainnet.aggregate.publish import ManifestError, Reconstructor, verify_manifest
from trainnet.aggregate.shard_state import intact
from trainnet.protocol.auth import public_key_hex
from trainnet.server.service import Service
from trainnet.store.blobs import BlobError

log = logging.getLogger("trainnet.coordinator")


class Integrity:
    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.signer = public_key_hex(svc.key)
        self.checked = -1  # the newest version found intact
        self.good: set[tuple[str, str]] = set()  # (key, sha256) of blobs already verified
        self.broken: int | None = None

    def _manifest(self, v: int) -> dict[str, Any]:
        try:
            doc = json.loads(self.svc.blobs.get(keys.manifest(v)))
        except (BlobError, ValueError) as exc:
            raise ManifestError(f"manifest of version {v} is unreadable: {exc}") from None
        return verify_manifest(doc, self.signer)

    def problem(self, version: int) -> str | None:
        """Why `version` cannot be rebuilt from the store, or None when it can."""
        try:
            start, deltas = Reconstructor(self._manifest, self.svc.blobs.get, self.svc.spec.layout.numel).plan(
                version, None)
            entries = list(self._manifest(start)["full"]["chunks"]) if start is not None else []
            for v in deltas:
                entries += self._manifest(v)["delta"]["shards"]
        except (ManifestError, KeyError, TypeError) as exc:
            return str(exc)[:300]
        for e in entries:
            mark = (e["key"], e["sha256"])
            if mark in self.good:
                continue
            if not intact(self.svc.blobs, e["key"], e["nbytes"], e):
                return f"blob {e['key']} does not match its manifest (size or sha256)"
            self.good.add(mark)
        return None

    def step(self) -> bool:
        """Check the latest version if it is new; start a republication when it is broken. True if started."""
        svc = self.svc
        version, published, busy, done = svc.read(lambda c: (c.version, c.published, bool(c.jobs), c.done))
        if not published or version == self.checked:
            return False
        why = self.problem(version)
        if why is None:
            self.checked, self.broken = version, None
            return False
        if self.broken != version:
            log.error("published version %d cannot be rebuilt from the blob store: %s", version, why)
            self.broken = version
        if busy or done:
            return False  # the job in flight publishes a new version: that one is checked next
        started = svc.step(lambda c: c.republish(svc.clock()))
        if started:
            log.warning("publishing version %d again, exactly and in full, as version %d", version, version + 1)
        return started
