"""What is no longer needed leaves the BlobStore: old aggregator state, old published versions, merged updates.

    pruner = Pruner(svc); pruner.step()       # the coordinator's housekeeping duty, off the request path

Kept: the aggregator state of the current and previous version; the published reconstructions re-basing may
need (`max_staleness` + 1 versions); every published version from the last full checkpoint at or before the
oldest version anyone may still need (open leases, pending audits, `keep_versions`), so a worker or verifier
can always rebuild it; the update and residual blobs of audits that are pending or failed (evidence). Merged
updates nobody audits are deleted once merged (the issue measured ≈267 TB of kept updates at the seed scale).
A finished job's merge-task rows leave the StateStore (2 x shards rows per version otherwise stay for the run).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from trainnet.aggregate import keys
from trainnet.core.merging import shard_ranges
from trainnet.server.service import Service
from trainnet.store.blobs import BlobError

log = logging.getLogger("trainnet.coordinator")

# The events that end a merge job (core/merging.py): after one, nothing reads the job's merge-task rows.
JOB_OVER = frozenset({"version_published", "aggregated", "warm_start_applied", "final_published",
                      "version_republished", "merge_cancelled"})


class Pruner:
    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.event_id = 0
        self.agg_below = 0  # aggregator state of versions below this is gone
        self.pub_below = 0
        self.versions_below = 0

    def _delete(self, key: str) -> None:
        try:
            self.svc.blobs.delete(key)
        except BlobError as exc:
            log.warning("could not delete %s: %s", key, exc)

    def step(self) -> None:
        svc = self.svc
        c = svc.ccfg
        version, published, need = svc.read(lambda core: (core.version, core.published, self._needed(core)))
        if not published:
            return
        shards = len(shard_ranges(svc.spec.layout.numel, c.shards, c.block))
        for v in range(self.agg_below, max(0, version - 1)):
            for s in range(shards):
                for what in ("theta", "mom", "center"):
                    self._delete(keys.agg(s, v, what))
        self.agg_below = max(self.agg_below, version - 1)
        for v in range(self.pub_below, max(0, version - c.max_staleness - 1)):
            for s in range(shards):
                self._delete(keys.agg(s, v, "pub"))
                self._delete(keys.agg(s, v, "sums"))
        self.pub_below = max(self.pub_below, version - c.max_staleness - 1)
        self._prune_versions(min(need, version - svc.limits.keep_versions))
        self._prune_updates()

    @staticmethod
    def _needed(core: Any) -> int:
        bases = [lease.spec.base_version for lease in core.leases.values()]
        bases += [a.spec.base_version for a in core.audits.values()]
        bases += [p.base_version for p in core.buffer.values()]
        return min(bases, default=core.version)

    def _manifest(self, v: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.svc.blobs.get(keys.manifest(v)))
        except (BlobError, KeyError, ValueError):
            return None

    def _prune_versions(self, need_from: int) -> None:
        """Delete published versions below the last full checkpoint at or before `need_from`."""
        full = None
        for v in range(need_from, self.versions_below - 1, -1):
            m = self._manifest(v) if v >= 0 else None
            if m is not None and m.get("full"):
                full = v
                break
        if full is None or full <= self.versions_below:
            return
        kept = {ch["key"] for ch in (self._manifest(full) or {}).get("full", {}).get("chunks", [])}
        for v in range(self.versions_below, full):
            m = self._manifest(v)
            if m is None:
                continue
            for s in (m.get("delta") or {}).get("shards", []):
                self._delete(s["key"])
            for ch in (m.get("full") or {}).get("chunks", []):
                if ch["key"] not in kept:
                    self._delete(ch["key"])
            self._delete(keys.manifest(v))
        self.versions_below = full

    def _prune_updates(self) -> None:
        svc = self.svc
        events = svc.state.events_since(self.event_id, 500)
        for e in events:
            self.event_id = e["id"]
            kind, data = e["kind"], e["data"]
            if kind in ("aggregated", "warm_start_applied") and data.get("job_id"):
                tasks = svc.state.merge_tasks(data["job_id"])
                updates = tasks[0]["spec"]["updates"] if tasks else []
                ids = [u["task_id"] for u in updates]
                audited = svc.read(lambda core, ids=ids: {t for t in ids if t in core.audits})
                for u in updates:
                    if u["task_id"] not in audited:
                        self._delete(u["blob"])
            elif kind == "audit_passed":  # a passed audit's residuals are no evidence of anything
                a = svc.state.log_get("audits", data.get("task_id", ""))
                if a is not None:
                    if a.get("residual_blob"):
                        self._delete(a["residual_blob"])
                    if a.get("merged_into") is not None:
                        self._delete(a["blob"])
            if kind in JOB_OVER and data.get("job_id"):  # the job is over and its rows were read above: they go
                svc.state.drop_merge_tasks(data["job_id"])
