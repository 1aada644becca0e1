"""A coordinator process assembled: service, API, and the duties that run beside the requests.

    rt = Runtime.open(cfg, state_url="sqlite:///state/coordinator.db", blob_url="state/blobs", limits=lim,
                      aggregators=1)          # 0: external `trainnet aggregator` processes do the merging
    rt.start(); ...; rt.close()               # threads: committer, clock, merges, aggregators, verifier, evaluator

The embedded default (SQLite + files, one in-process aggregator) and the scale-out topology (PostgreSQL +
S3 + N aggregator processes) run the same code; only where the aggregator loops live differs.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainnet.aggregate.merge import ShardEnv
from trainnet.aggregate.runner import Aggregator
from trainnet.config import RunConfig
from trainnet.protocol.wire import WireLimits
from trainnet.server.api import Api
from trainnet.server.evaluator import Evaluator
from trainnet.server.integrity import Integrity
from trainnet.server.limits import ServerLimits
from trainnet.server.prune import Pruner
from trainnet.server.runspec import RunSpec
from trainnet.server.service import Service
from trainnet.store.blobs import BlobStore, open_blob_store
from trainnet.store.state import StateStore, open_state_store

log = logging.getLogger("trainnet.coordinator")
INLINE_MERGE_BELOW = 4_000_000  # parameters: below this an embedded aggregator merges in the coordinator
# How often the merge job in flight is polled when idle. Each poll reads every merge task of the job with its spec,
# which lists all the job's updates (~0.4 KB each: ~0.85 MB of JSON at a quorum of 2,100), so polling every 50 ms
# took a fifth of the coordinator's GIL time at 4,200 nodes (bench/results/load.md).
MERGE_POLL_S = 0.25


def state_urls(state_dir: str | Path | None, db: str | None, blobs: str | None) -> tuple[str, str]:
    """--state DIR gives sqlite:///DIR/coordinator.db and DIR/blobs; --db / --blobs override either."""
    if state_dir is None and (db is None or blobs is None):
        raise ValueError("give --state DIR, or both --db URL and --blobs URL")
    d = Path(state_dir).resolve() if state_dir is not None else None
    if d is not None:
        d.mkdir(parents=True, exist_ok=True)
    return (db or f"sqlite:///{d / 'coordinator.db'}"), (blobs or str(d / "blobs"))


def shard_env(spec: RunSpec, blobs: BlobStore) -> ShardEnv:
    layout = spec.layout
    limits = WireLimits(max_total_bytes=1 << 40, max_header_bytes=min(1 << 20, 64 * 1024 + 1024 * len(layout.names)),
                        max_tensors=max(1, len(layout.names)), max_elements_per_tensor=max(1, layout.numel),
                        max_total_elements=max(1, layout.numel))
    return ShardEnv(blobs, layout, limits, spec.ccfg.run_id, init_params=spec.init_params)


@dataclass
class Runtime:
    svc: Service
    api: Api
    aggregators: list[Aggregator] = field(default_factory=list)
    evaluator: Evaluator | None = None
    pruner: Pruner | None = None
    pool: Any = None  # DataPlanePool: tensor work in its own process(es), off the control plane's interpreter
    integrity: Integrity | None = None

    @classmethod
    def open(cls, cfg: RunConfig, state_url: str, blob_url: str, limits: ServerLimits | None = None,
             aggregators: int = 1, evaluate: bool = True, eval_interval_s: float = 2.0, sync: bool = False,
             state: StateStore | None = None, blobs: BlobStore | None = None, spec: RunSpec | None = None,
             clock: Any = time.time, processes: int = 1) -> Runtime:
        """`processes`: data-plane worker processes for merges, audit recomputation and evaluation (0 or a
        sync runtime: in this process, as the simulator does)."""
        spec = spec or RunSpec.load(cfg)
        state = state or open_state_store(state_url)
        blobs = blobs or open_blob_store(blob_url)
        svc = Service(spec, state, blobs, limits, sync=sync, clock=clock)
        release_dead_claims(svc)
        api = Api(svc)
        pool = None
        if processes > 0 and not sync and blob_url != "memory:":
            from trainnet.server.pool import DataPlanePool

            pool = DataPlanePool(cfg, blob_url, processes)
            api.audits.pool = pool
        env = shard_env(spec, blobs)
        # A small model's merge takes milliseconds: it runs in this process, where it cannot queue behind an
        # audit recomputation in the pool; a large one's merge is tensor work for the pool.
        run = pool.merge if pool is not None and spec.layout.numel >= INLINE_MERGE_BELOW else None
        aggs = [Aggregator(state, env, f"{svc.owner}:agg{i}", spec.ccfg.merge_lease_s, run=run)
                for i in range(aggregators)]
        ev = Evaluator(spec, state, blobs, eval_interval_s, compute=pool.evaluate if pool else None) \
            if evaluate else None
        return cls(svc, api, aggs, ev, Pruner(svc), pool, Integrity(svc))

    # ------------------------------------------------------------------ duties (each returns True when busy)
    def tick(self) -> bool:
        self.svc.tick(self.svc.clock())
        return False

    def merges(self) -> bool:
        return self.svc.pump(self.svc.clock())

    def verify(self) -> bool:
        return self.api.audits.verify_once(self.svc.clock())

    def evaluate(self) -> bool:
        if self.evaluator is None:
            return False
        latest, tokens, done, published = self.svc.read(
            lambda c: (c.version, c.tokens_accepted, c.done, c.published))
        return self.evaluator.step(self.svc.clock(), latest, tokens, done, published)

    def housekeeping(self) -> bool:
        self.svc.flush_traffic()
        self.svc.probe()
        if self.integrity is not None:
            self.integrity.step()
        if self.pruner is not None:
            self.pruner.step()
        return False

    def _aggregate(self, agg: Aggregator) -> bool:
        ran = agg.step(self.svc.clock())
        if ran:
            self.svc.kick()  # the merge job may be ready for its next phase
        return ran

    def drain(self, now: float | None = None, max_rounds: int = 1000) -> None:
        """Run merges to completion in this thread (sync mode: the simulator and in-process tests)."""
        for _ in range(max_rounds):
            busy = any(a.step(self.svc.clock() if now is None else now) for a in self.aggregators)
            busy = self.svc.pump(self.svc.clock() if now is None else now) or busy
            if not busy:
                return

    def start(self) -> None:
        lim = self.svc.limits
        duties = [(lim.tick_s, self.tick, "clock"), (MERGE_POLL_S, self.merges, "merges"),
                  (0.25, self.verify, "verifier"), (0.5, self.evaluate, "evaluator"),
                  (lim.tick_s, self.housekeeping, "housekeeping")]
        duties += [(0.1, lambda a=a: self._aggregate(a), f"aggregator{i}") for i, a in enumerate(self.aggregators)]
        self.svc.start(duties)

    def close(self) -> None:
        try:
            if self.evaluator is not None:  # the final version always gets its held-out loss
                self.evaluate()
        except Exception:
            log.exception("final evaluation failed")
        self.svc.close()
        if self.pool is not None:
            self.pool.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_claims(svc: Service) -> int:
    """Merge tasks claimed by an aggregator of this host whose process is gone (a coordinator killed with its
    in-process aggregators, say) go back to the queue now instead of when their claim lapses."""
    host = svc.owner.split(":", 1)[0]
    jobs = svc.read(lambda c: list(c.jobs))
    n = 0
    for job_id in jobs:
        for t in svc.state.merge_tasks(job_id):
            parts = str(t["owner"] or "").split(":")
            if t["status"] == "claimed" and len(parts) >= 2 and parts[0] == host and parts[1].isdigit() \
                    and not _alive(int(parts[1])):
                n += svc.state.release_merge_task(job_id, t["shard"], t["phase"], t["owner"])
    if n:
        log.info("released %d merge task(s) claimed by aggregators that are gone", n)
    return n
