"""An aggregator: claims merge tasks from the StateStore and runs them against the BlobStore.

    agg = Aggregator(state, env, owner="host:pid:0")
    agg.step(time.time())                      # one task if one is ready; True when it ran one
    agg.run(stop_event, poll_s=0.2)            # until stopped: `trainnet aggregator`, or a thread in-process

Any number of aggregators, on any machines, can serve one run: a task is held by one claimant at a time
(PostgreSQL: FOR UPDATE SKIP LOCKED), its claim lapses after `lease_s` if the process dies, and a task run
twice writes the same bytes (every merge is deterministic), so a retry is harmless. A task that fails (the
object store unreachable, say) is handed back at once, so the run does not stall for `lease_s`; the aggregator
that failed then claims nothing for a while (1 s, doubling per attempt up to a minute), so an error that keeps
happening is retried at a bounded rate instead of in a hot loop.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any

from trainnet.aggregate.merge import ShardEnv, run_merge_task
from trainnet.store.state import StateStore

log = logging.getLogger("trainnet.aggregate")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0


class Aggregator:
    def __init__(self, state: StateStore, env: ShardEnv, owner: str, lease_s: float = 300.0,
                 run: Any = None) -> None:
        self.state, self.env, self.owner, self.lease_s = state, env, owner, lease_s
        self.run_task = run or (lambda spec: run_merge_task(spec, env))  # or a data-plane process pool
        self.tasks_done = 0
        self.tasks_failed = 0
        self.seconds = 0.0
        self.last_error: str | None = None
        self.resume_at = 0.0  # after a failure: claim nothing before this time

    def step(self, now: float) -> bool:
        if now < self.resume_at:
            return False
        task = self.state.claim_merge_task(self.owner, now, self.lease_s)
        if task is None:
            return False
        t0 = time.perf_counter()
        try:
            result = self.run_task(task["spec"])
        except Exception as exc:
            self.tasks_failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            attempt = int(task.get("attempt") or 1)
            wait = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (attempt - 1))
            self.resume_at = now + wait
            log.error("merge task %s shard %s %s failed (attempt %s; handed back, this aggregator waits %.0fs): "
                      "%s\n%s", task["job_id"], task["shard"], task["phase"], attempt, wait, exc,
                      traceback.format_exc(limit=4))
            try:  # back in the queue now, for any aggregator, instead of when the claim lapses
                self.state.release_merge_task(task["job_id"], task["shard"], task["phase"], self.owner)
            except Exception as rel:  # the store is what failed: the claim lapses as before
                log.warning("could not hand back merge task %s shard %s %s: %s", task["job_id"], task["shard"],
                            task["phase"], rel)
            return False
        dt = time.perf_counter() - t0
        self.seconds += dt
        result = result | {"seconds": round(dt, 4), "owner": self.owner}
        if self.state.finish_merge_task(task["job_id"], task["shard"], task["phase"], self.owner, result):
            self.tasks_done += 1
            log.info("merge task %s shard %s %s done in %.2fs", task["job_id"], task["shard"], task["phase"], dt)
        return True

    def run(self, stop: threading.Event, poll_s: float = 0.2, clock: Any = time.time) -> None:
        while not stop.is_set():
            if not self.step(clock()):
                stop.wait(poll_s)
