"""Helpers for driving the sans-IO engine in tests: a synthetic manifest, small configs, leases and submissions
built from what the engine handed out, and fake data-plane results for merge jobs.

    core = published(config(verify_rate=0.5))            # version 0 published, ready to lease
    spec = core.lease(LeaseRequest("n0"), now)           # after core.register(Register("n0"), now)
    reply = core.submit(submission(core, spec.task_id), now)
    finish_job(core, now)                                 # stats (fake norms) -> plan -> apply -> published

The data plane is faked at the engine's boundary only (merge_stats_done / merge_applied take the same shapes
aggregate/merge.py returns); tests/aggregate runs the real one.
"""

from __future__ import annotations

import hashlib
from typing import Any

from trainnet.core import Coordinator, CoordinatorConfig, shard_ranges
from trainnet.data.manifest import Manifest, ShardEntry
from trainnet.protocol.messages import LeaseRequest, Register, TaskSpec, UpdateSubmission
from trainnet.verify.commit import EMPTY_DIGEST

MANIFEST = Manifest("test", tuple(
    ShardEntry(i, hashlib.sha256(f"shard{i}".encode()).hexdigest(), 4096, "val" if i % 4 == 3 else "train")
    for i in range(12)))
NUM_PARAMS = 5000


def config(**overrides: Any) -> CoordinatorConfig:
    """A small run: 10-step tasks of 160 tokens, quorum 3, verification off unless asked, 1024-param blocks."""
    base: dict[str, Any] = dict(run_id="t", tokens_target=10**9, h=10, batch_size=2, seq_len=8, quorum=3,
                                grace_s=30.0, lease_s=100.0, verify_rate=0.0, verify_probation=0, codec="q2",
                                audit_key="test-key", block=1024, target_staleness=0.0)
    base.update(overrides)
    return CoordinatorConfig(**base)


def fresh(cfg: CoordinatorConfig, now: float = 0.0) -> Coordinator:
    return Coordinator.fresh(cfg, MANIFEST, NUM_PARAMS, now)


def restore(cfg: CoordinatorConfig, sd: dict[str, Any]) -> Coordinator:
    return Coordinator.from_state(cfg, MANIFEST, NUM_PARAMS, sd)


def published(cfg: CoordinatorConfig, now: float = 0.0) -> Coordinator:
    """A fresh engine whose init job (version 0) the data plane has written."""
    core = fresh(cfg, now)
    finish_job(core, now)
    assert core.published and core.version == 0
    return core


def digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def join(core: Coordinator, *nodes: str, now: float = 0.0, token_id: str = "") -> None:
    for n in nodes:
        reply = core.register(Register(n, public_key=digest(n)[:64], token_id=token_id), now)
        assert reply.ok, reply


def lease(core: Coordinator, node: str, now: float) -> TaskSpec:
    spec = core.lease(LeaseRequest(node), now)
    assert isinstance(spec, TaskSpec), spec
    return spec


def submission(core: Coordinator, task_id: str, ef_in: str | None = None, ef_out: str | None = None,
               **overrides: Any) -> UpdateSubmission:
    """What an honest worker submits for a task it holds: counts, codec and blob key as leased. The residual
    commitments continue the node's chain by default (ef_in = its last ef_out, ef_out a fresh digest)."""
    lease_ = core.leases[task_id]
    spec = lease_.spec
    fields: dict[str, Any] = dict(
        node_id=spec.node_id, task_id=task_id, base_version=spec.base_version, tokens=spec.tokens,
        steps=spec.hparams["steps"], blob=lease_.upload_key, sha256=digest(f"blob:{task_id}"), nbytes=1000,
        codec=spec.codec, ef_in=core.chain.get(spec.node_id, EMPTY_DIGEST) if ef_in is None else ef_in,
        ef_out=digest(f"ef:{task_id}") if ef_out is None else ef_out, loss=2.5,
        header_sha256=digest(f"hdr:{task_id}"))
    fields.update(overrides)
    return UpdateSubmission(**fields)


def lease_and_submit(core: Coordinator, node: str, now: float, **overrides: Any):
    spec = lease(core, node, now)
    return spec, core.submit(submission(core, spec.task_id, **overrides), now)


def stats_results(core: Coordinator, job_id: str, invalid: dict[str, str] | None = None,
                  norm_of: Any = None) -> dict[int, dict[str, Any]]:
    """Per-shard stats results as aggregate/merge.py returns them: per update ok + per-block sums of squares
    (norm_of(task_id) spread evenly over the blocks), or ok=False with a reason for `invalid` tasks."""
    job = core.jobs[job_id]
    invalid = invalid or {}
    ranges = shard_ranges(core.num_params, core.cfg.shards, core.cfg.block)
    nblocks = -(-core.num_params // core.cfg.block)
    out = {}
    for s, (lo, hi) in enumerate(ranges):
        b0, b1 = lo // core.cfg.block, -(-hi // core.cfg.block)
        rows = []
        for u in job.updates:
            t = u["task_id"]
            if t in invalid:
                rows.append({"ok": False, "reason": invalid[t], "detail": "test", "sq": []})
            else:
                norm = norm_of(t) if norm_of else 1.0 + int(t[1:]) % 5
                rows.append({"ok": True, "sq": [norm * norm / nblocks] * (b1 - b0)})
        out[s] = {"shard": s, "updates": rows}
    return out


def finish_job(core: Coordinator, now: float, invalid: dict[str, str] | None = None, norm_of: Any = None,
               max_jobs: int = 10) -> list[str]:
    """Run every due job through the fake data plane (jobs chain: a publish may start the next). Returns the
    ids of the jobs finished."""
    done = []
    for _ in range(max_jobs):
        job = next(iter(core.jobs.values()), None)
        if job is None:
            return done
        if job.phase == "stats":
            core.merge_stats_done(job.job_id, stats_results(core, job.job_id, invalid, norm_of), now)
            if job.job_id not in core.jobs:  # cancelled: nothing valid
                done.append(job.job_id)
                continue
        core.merge_applied(job.job_id, f"versions/{job.job_id}.json", now)
        done.append(job.job_id)
    raise AssertionError("jobs keep coming")
