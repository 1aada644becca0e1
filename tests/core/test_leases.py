"""Leases on the engine's clock (deadlines, heartbeats, expiry by tick, abandon, per-node and budget limits) and
the quorum that grows with the swarm so that staleness stays bounded."""

from __future__ import annotations

import heapq
import random
import statistics

import pytest
from engine_kit import config, finish_job, fresh, join, lease, published, submission

from trainnet.core.records import REJECT_UNKNOWN_TASK, REJECT_WRONG_NODE
from trainnet.core.scaling import effective_quorum
from trainnet.protocol.messages import Heartbeat, LeaseRequest, NoTask, TaskSpec, UpdateSubmission


# ------------------------------------------------------------------ deadlines and expiry
def test_lease_deadline_expires_at_the_tick_and_the_shard_goes_back_to_the_queue():
    core = published(config(lease_s=100.0))
    join(core, "n0", "n1")
    spec = lease(core, "n0", 10.0)
    assert spec.deadline == 110.0 and core.tokens_outstanding == spec.tokens
    core.tick(109.9)
    assert spec.task_id in core.leases
    core.tick(110.0)
    assert spec.task_id not in core.leases and core.leases_expired == 1
    assert core.nodes["n0"].leases_expired == 1 and core.nodes["n0"].last_problem == 110.0
    assert core.tokens_outstanding == 0
    # the late upload is refused; the same (shard, seed) is handed out next, to anybody
    late = core.submit(UpdateSubmission(spec.node_id, spec.task_id, spec.base_version, spec.tokens,
                                        spec.hparams["steps"], "updates/x.tnup", "0" * 64, 10, spec.codec), 111.0)
    assert not late.accepted and late.reason == REJECT_UNKNOWN_TASK
    again = lease(core, "n1", 112.0)
    assert (again.shard_id, again.seed) == (spec.shard_id, spec.seed) and again.task_id != spec.task_id
    fresh = lease(core, "n0", 112.0)
    assert fresh.shard_id != spec.shard_id


def test_longer_tasks_get_proportionally_longer_leases():
    core = published(config(lease_s=100.0, h=10, h_start=20, h_ramp=0.5, tokens_target=10_000))
    join(core, "n0")
    spec = lease(core, "n0", 0.0)
    assert spec.hparams["steps"] == 20 and spec.deadline == 200.0


def test_heartbeat_extends_the_lease_and_only_its_holder_may_send_it():
    core = published(config(lease_s=100.0))
    join(core, "n0", "n1")
    spec = lease(core, "n0", 0.0)
    reply = core.heartbeat(Heartbeat("n0", spec.task_id, {"steps_done": 3, "steps": 10}), 80.0)
    assert reply.ok and reply.deadline == 180.0
    assert core.leases[spec.task_id].progress == {"steps_done": 3, "steps": 10, "time": 80.0}
    assert core.heartbeat(Heartbeat("n1", spec.task_id), 90.0).reason == REJECT_WRONG_NODE
    assert core.heartbeat(Heartbeat("n0", "t9999999"), 90.0).reason == REJECT_UNKNOWN_TASK
    assert core.heartbeat(Heartbeat("zz", spec.task_id), 90.0).reason == "unknown_node"
    core.tick(150.0)  # past the first deadline (100): the renewed lease stands
    assert spec.task_id in core.leases
    assert core.submit(submission(core, spec.task_id), 170.0).accepted
    core.tick(500.0)  # the stale heap entries of an answered lease expire nothing
    assert core.leases_expired == 0


def test_abandon_returns_the_shard_first_and_is_not_an_expiry():
    core = published(config(lease_s=100.0, max_leases_per_node=3))
    join(core, "n0", "n1")
    a, b = lease(core, "n0", 0.0), lease(core, "n0", 0.0)
    core.tick(100.0)  # both expire: requeued in order a, b
    c = lease(core, "n1", 101.0)
    assert (c.shard_id, c.seed) == (a.shard_id, a.seed)
    assert core.abandon("n0", c.task_id, 102.0) == REJECT_WRONG_NODE
    assert core.abandon("n1", "t9999999", 102.0) == REJECT_UNKNOWN_TASK
    assert core.abandon("zz", c.task_id, 102.0) == "unknown_node"
    assert core.abandon("n1", c.task_id, 102.0) == ""
    assert c.task_id not in core.leases and core.leases_expired == 2 and core.nodes["n1"].leases_expired == 0
    # abandoned goes to the front, ahead of b that expired earlier
    d, e = lease(core, "n1", 103.0), lease(core, "n1", 103.0)
    assert [(x.shard_id, x.seed) for x in (d, e)] == [(a.shard_id, a.seed), (b.shard_id, b.seed)]


def test_per_node_lease_limit_and_the_token_budget():
    core = published(config(max_leases_per_node=1, tokens_target=400))  # 160 tokens a task
    join(core, "n0", "n1", "n2")
    a = lease(core, "n0", 0.0)
    assert core.lease(LeaseRequest("n0"), 0.0) == NoTask("lease_limit")
    lease(core, "n1", 0.0)
    lease(core, "n2", 0.0)  # 480 of 400 tokens in flight: the last task may overshoot
    assert core.lease(LeaseRequest("n0"), 1.0).reason in ("lease_limit", "budget_reached")
    core.abandon("n0", a.task_id, 1.0)
    assert core.lease(LeaseRequest("zz"), 1.0) == NoTask("unknown_node")
    spec = core.lease(LeaseRequest("n0"), 1.0)     # the abandoned task's budget is free again
    assert isinstance(spec, TaskSpec) and (spec.shard_id, spec.seed) == (a.shard_id, a.seed)
    assert core.lease(LeaseRequest("n0"), 2.0) == NoTask("lease_limit")


def test_no_lease_before_version_zero_is_published():
    core = fresh(config())
    join(core, "n0")
    assert core.lease(LeaseRequest("n0"), 0.0).reason == "starting"
    finish_job(core, 1.0)
    assert isinstance(core.lease(LeaseRequest("n0"), 1.0), TaskSpec)


# ------------------------------------------------------------------ quorum scaling
@pytest.mark.parametrize("base, active, target, want", [
    (4, 0, 2.0, 4), (4, 8, 2.0, 4), (4, 9, 2.0, 5), (4, 4200, 2.0, 2100), (4, 4200, 0.0, 4), (1, 3, 1.5, 2),
    (8, 100, 4.0, 25)])
def test_effective_quorum(base, active, target, want):
    assert effective_quorum(base, active, target) == want


def test_tick_rescales_the_quorum_to_the_active_unbanned_nodes():
    core = published(config(quorum=2, target_staleness=2.0, lease_s=100.0, active_window_s=50.0))
    nodes = [f"n{i}" for i in range(9)]
    join(core, *nodes, now=0.0)
    core.tick(10.0)
    assert (core.active_nodes, core.quorum_eff) == (9, 5)
    core.ban("n0", "x", 11.0)
    core.tick(12.0)
    assert (core.active_nodes, core.quorum_eff) == (8, 4)
    for n in nodes[1:4]:
        core.lease(LeaseRequest(n), 40.0)  # seen again at 40
    core.tick(60.0)  # only those three were seen within the window
    assert (core.active_nodes, core.quorum_eff) == (3, 2)


def _swarm(target_staleness: float, waves: list[tuple[float, int]], task_s: float = 100.0, seed: int = 0,
           until: float = 2000.0) -> list[tuple[float, int, int]]:
    """Nodes join in waves and train back to back (tasks of task_s ± 20%), uploading as soon as they finish;
    merges take no time. Returns (time, staleness, active nodes) of every accepted update."""
    rng = random.Random(seed)
    core = published(config(quorum=4, target_staleness=target_staleness, lease_s=3 * task_s, grace_s=task_s,
                            max_staleness=10**6, max_leases_per_node=1))
    events: list[tuple[float, int, str, str]] = []
    seq = 0
    count = 0
    for at, n in waves:
        for _ in range(n):
            events.append((at + rng.uniform(0, task_s), seq, "join", f"n{count}"))
            seq += 1
            count += 1
    t = 0.0
    while t < until:
        events.append((t, seq, "tick", ""))
        seq += 1
        t += task_s / 4
    heapq.heapify(events)
    out = []
    while events:
        now, _, kind, node = heapq.heappop(events)
        if now > until:
            break
        if kind == "tick":
            core.tick(now)
            finish_job(core, now)
            continue
        if kind == "join":
            join(core, node, now=now)
        else:  # "done": the node's task ends
            reply = core.submit(submission(core, kind), now)
            assert reply.accepted, reply
            out.append((now, reply.staleness, core.active_nodes))
            finish_job(core, now)
        spec = core.lease(LeaseRequest(node), now)
        assert isinstance(spec, TaskSpec), spec
        heapq.heappush(events, (now + task_s * rng.uniform(0.8, 1.2), seq, spec.task_id, node))
        seq += 1
    return out


def test_staleness_stays_bounded_as_the_swarm_grows():
    waves = [(0.0, 4), (500.0, 28), (1000.0, 96)]  # 4 -> 32 -> 128 nodes
    scaled = _swarm(2.0, waves)
    fixed = _swarm(0.0, waves)                      # the same swarm with the quorum fixed at 4
    late = [s for t, s, _ in scaled if t > 1300.0]
    late_fixed = [s for t, s, _ in fixed if t > 1300.0]
    assert len(late) > 150 and max(a for _, _, a in scaled) == 128
    # ~target_staleness versions per task whatever the size (a few more while the quorum catches up)
    assert statistics.mean(late) <= 2.5 and max(late) <= 5
    middle = [s for t, s, _ in scaled if 700.0 < t < 1000.0]
    assert statistics.mean(middle) <= 2.5 and max(middle) <= 5
    # without scaling the same swarm sees staleness grow with its size: the test would notice a broken rule
    assert statistics.mean(late_fixed) > 3 * statistics.mean(late) and max(late_fixed) > 20


@pytest.mark.parametrize("field,value", [("header_sha256", ""), ("header_sha256", "zz" * 32), ("sha256", "0" * 63)])
def test_an_update_without_valid_hashes_is_refused_and_its_lease_kept(field, value):
    """Aggregators read a stored update through the hashes the node signed: none, none read."""
    core = published(config())
    join(core, "n0")
    spec = lease(core, "n0", 1.0)
    reply = core.submit(submission(core, spec.task_id, **{field: value}), 2.0)
    assert not reply.accepted and reply.reason == "bad_blob"
    assert spec.task_id in core.leases and not core.buffer
    assert core.submit(submission(core, spec.task_id), 3.0).accepted  # the honest retry still lands
