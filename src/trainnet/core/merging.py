"""Merge jobs: how the engine turns a buffer of accepted updates into the next model version, via the data plane.

    core._maybe_merge(now)                        # quorum reached / grace passed / run closing -> a MergeJob
    changes.merge_tasks                           # one task per aggregator shard and phase, for the StateStore
    core.merge_stats_done(job_id, {shard: result}, now)   # validity and norms of every update -> the plan
    core.merge_applied(job_id, {shard: result}, manifest_key, now)   # the version is published

A job's phases: "stats" (each aggregator shard validates its slice of every update against the signed hash and
the model's shapes, and measures per-block sums of squares), then "apply" (each shard aggregates its slice with
the decided row scales and weights and takes the outer step), then the shell writes the signed version
manifest and reports it. Kinds: "init" (version 0, the model's initial weights), "warm_start" (one long
single-node task applied as is), "merge", "final" (re-publishes the last model exactly, closing the run) and
"republish" (the same without closing it: the latest version's published blobs were found corrupt).
Only one job is in flight at a time (the outer optimizer is sequential); updates that arrive meanwhile wait.
"""

from __future__ import annotations

import math
from typing import Any

from trainnet.consensus.plan import plan_merge
from trainnet.consensus.staleness import staleness_weight
from trainnet.core.records import MergeJob, Pending

INIT, MERGE, WARM, FINAL, REPUBLISH = "init", "merge", "warm_start", "final", "republish"
EXACT = (INIT, FINAL, REPUBLISH)  # published exactly (fp32), in full
BLOCK = 1 << 20  # parameters per statistics block: per-block partial sums make 1-shard and N-shard merges agree


def shard_ranges(num_params: int, shards: int, block: int = BLOCK) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) ranges of the flat parameter vector, one per shard, on block boundaries."""
    nblocks = max(1, math.ceil(num_params / block))
    shards = max(1, min(shards, nblocks))
    out = []
    for s in range(shards):
        lo, hi = s * nblocks // shards * block, (s + 1) * nblocks // shards * block
        out.append((min(lo, num_params), min(hi, num_params)))
    return out


class MergeMixin:
    """Methods of `Coordinator` (engine.py) that decide merges; state lives on the engine."""

    # ------------------------------------------------------------------ starting jobs
    def _start_init(self, now: float) -> None:
        self._new_job(INIT, [], [], 1.0, now, phase="apply", version_from=-1)

    def _maybe_merge(self, now: float) -> None:
        """Start the next job if none is in flight and one is due."""
        if self.jobs or self.done or not self.published:
            return
        c = self.cfg
        if c.warm_start_tokens > 0 and self.version == 0:
            if self.buffer:
                self._start_merge(now, WARM)
            return
        closing = self.tokens_accepted >= c.tokens_target
        if closing and not self.closed:
            self.closed = True  # no more leases or uploads: what is buffered is merged, then the final version
            self._changes.meta = True
        if self.buffer and (len(self.buffer) >= self.quorum_eff or self.closed):
            self._start_merge(now)
        elif self.closed and not self.buffer:
            self._new_job(FINAL, [], [], 1.0, now, phase="apply")

    def republish(self, now: float) -> bool:
        """The latest version cannot be rebuilt from the published blobs (one is corrupt or truncated): publish
        the aggregators' state of it again, exactly and in full, as the next version (no outer step). False
        when a job is in flight (it publishes a version of its own: check that one) or the run is done."""
        if self.jobs or self.done or not self.published:
            return False
        self._new_job(REPUBLISH, [], [], 1.0, now, phase="apply")
        return True

    def _start_merge(self, now: float, kind: str = MERGE) -> None:
        c = self.cfg
        updates: list[Pending] = list(self.buffer.values())
        for p in updates:
            self._changes.touch("buffer", p.task_id)
        self.buffer = {}
        taus = [self.version - p.base_version for p in updates]
        tokens = [float(p.tokens) if c.token_weighting else 1.0 for p in updates]
        w = [t * staleness_weight(tau, c.staleness_power) for t, tau in zip(tokens, taus, strict=True)]
        # The rule sees relative weights; the step is damped by the buffer's token-weighted freshness (FedBuff-
        # style) and, for a grace-window merge short of the quorum, by len/quorum (partial-merge scaling).
        damping = sum(w) / sum(tokens)
        if c.partial_scaling and kind == MERGE:
            damping *= min(1.0, len(updates) / self.quorum_eff)
        if kind == WARM:
            damping = 1.0
        total = sum(w)
        docs = [p.to_doc() | {"staleness": tau} for p, tau in zip(updates, taus, strict=True)]
        self._new_job(kind, docs, [x / total for x in w], damping, now, phase="stats")

    def _new_job(self, kind: str, updates: list[dict[str, Any]], weights: list[float], damping: float, now: float,
                 phase: str, version_from: int | None = None) -> MergeJob:
        job = MergeJob(f"j{self.job_counter:07d}", kind, self.version if version_from is None else version_from,
                       updates, weights, damping, self.cfg.aggregator if kind == MERGE else "mean",
                       seed=self.version, created=now, phase=phase)
        self.job_counter += 1
        self.jobs[job.job_id] = job
        self._changes.touch("jobs", job.job_id)
        self._changes.meta = True
        self._emit_tasks(job)
        self._emit(now, "merge_started", job_id=job.job_id, job_kind=kind, updates=len(updates), phase=phase)
        return job

    def _emit_tasks(self, job: MergeJob) -> None:
        for s in range(len(shard_ranges(self.num_params, self.cfg.shards, self.cfg.block))):
            self._changes.merge_tasks.append({"job_id": job.job_id, "shard": s, "phase": job.phase,
                                              "spec": self.merge_task_spec(job, s)})

    def merge_task_spec(self, job: MergeJob, shard: int) -> dict[str, Any]:
        """Everything an aggregator needs for one shard of one phase (it never reads the engine's state)."""
        c = self.cfg
        ranges = shard_ranges(self.num_params, c.shards, c.block)
        lo, hi = ranges[shard]
        version_to = job.version_from + 1
        full = job.kind in EXACT or (c.full_every > 0 and version_to % c.full_every == 0)
        return {
            "run_id": c.run_id, "job_id": job.job_id, "kind": job.kind, "phase": job.phase,
            "version_from": job.version_from, "version_to": version_to, "shard": shard, "shards": len(ranges),
            "lo": lo, "hi": hi, "num_params": self.num_params, "block": c.block,
            "updates": [{k: u[k] for k in ("task_id", "node_id", "base_version", "blob", "sha256", "nbytes",
                                           "codec", "tokens", "steps", "ef_in", "ef_out", "staleness",
                                           "header_sha256")}
                        for u in job.updates],
            "weights": job.weights, "damping": job.damping, "rule": job.rule, "seed": job.seed,
            "stale_mode": c.stale_mode, "max_staleness": c.max_staleness, "plan": job.plan,
            "outer": {"lr": 1.0 if job.kind == WARM else c.outer_lr,
                      "momentum": 0.0 if job.kind == WARM else c.outer_momentum, "nesterov": c.nesterov},
            "publish": {"codec": c.publish_codec, "full": full, "exact": job.kind in EXACT},
        }

    # ------------------------------------------------------------------ results from the data plane
    def merge_stats_done(self, job_id: str, results: dict[int, dict[str, Any]], now: float) -> None:
        """Every shard measured the job's updates: drop the invalid ones (evidence, shards requeued), decide the
        row scales and weights by the rule (consensus/plan.py), and hand the apply phase out."""
        job = self.jobs[job_id]
        if job.phase != "stats":
            raise ValueError(f"job {job_id} is in phase {job.phase}, not stats")
        n = len(job.updates)
        shards = [results[s] for s in sorted(results)]
        for i, u in enumerate(job.updates):
            bad = next((r["updates"][i] for r in shards if not r["updates"][i]["ok"]), None)
            if bad is not None and u["task_id"] not in job.excluded:
                job.excluded[u["task_id"]] = bad["reason"]
                node = self.nodes.get(u["node_id"])
                if node is not None:
                    node.evidence.append({"task_id": u["task_id"], "time": now, "reason": bad["reason"],
                                          "detail": str(bad.get("detail", ""))[:200], "sha256": u["sha256"]})
                self._drop_pending(Pending.from_doc(u), bad["reason"], now, in_buffer=False)
            elif u["task_id"] in job.excluded and job.excluded[u["task_id"]] == "node banned":
                self._drop_pending(Pending.from_doc(u), "node banned", now, in_buffer=False)
        valid = [i for i in range(n) if job.updates[i]["task_id"] not in job.excluded]
        self._changes.touch("jobs", job_id)
        if self.closed and self.tokens_accepted < self.cfg.tokens_target:
            self.closed = False  # dropped updates must be trained again
        if not valid:
            del self.jobs[job_id]
            self._emit(now, "merge_cancelled", job_id=job_id, reason="no valid update")
            self._maybe_merge(now)
            return
        # Norms from per-block partial sums, added in global block order: the same floats in the same order
        # whatever the number of shards, so every shard count decides the same plan.
        sq = [0.0] * n
        for r in shards:
            for i in valid:
                for x in r["updates"][i]["sq"]:
                    sq[i] += x
        norms = [math.sqrt(sq[i]) for i in valid]
        w = [job.weights[i] for i in valid]
        total = sum(w)
        plan = plan_merge(job.rule, norms, [x / total for x in w])
        job.plan = plan | {"valid": valid, "norms": norms}
        job.phase = "apply"
        self._emit_tasks(job)
        self._emit(now, "merge_planned", job_id=job_id, valid=len(valid), excluded=len(job.excluded))

    def merge_applied(self, job_id: str, manifest_key: str, now: float) -> None:
        """Every shard applied its slice and the shell wrote the version manifest: publish the version."""
        job = self.jobs.pop(job_id)
        self._changes.touch("jobs", job_id)
        self._changes.meta = True
        valid = job.plan["valid"] if job.plan else []
        if job.kind == INIT:
            self.version, self.published = 0, True
            kind = "version_published"
        else:
            self.version = job.version_from + 1
            if job.kind in (MERGE, WARM):
                self.outer_steps += 1
                self.updates_merged += len(valid)
            kind = {MERGE: "aggregated", WARM: "warm_start_applied", FINAL: "final_published",
                    REPUBLISH: "version_republished"}[job.kind]
        self.last_version_at = now
        for i in valid:
            u = job.updates[i]
            self._changes.log("updates", u["task_id"], u | {"merged_into": self.version})
            a = self.audits.get(u["task_id"])
            if a is not None:
                a.merged_into = self.version
                self._changes.touch("audits", a.task_id)
        self._changes.log("versions", f"v{self.version:08d}", {
            "version": self.version, "manifest": manifest_key, "kind": job.kind, "updates": len(valid),
            "tokens": self.tokens_accepted, "created": now, "job_id": job_id})
        self._emit(now, kind, version=self.version, updates=len(valid), job_id=job_id)
        if job.kind == FINAL:
            self.done, self.done_at = True, now
            self._emit(now, "run_done", version=self.version, tokens=self.tokens_accepted)
            return
        self._maybe_merge(now)
