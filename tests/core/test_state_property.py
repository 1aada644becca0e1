"""The engine's state is one value: after any sequence of operations, `state_dict()` restores an engine that is
indistinguishable from the original (same state, same replies, same events, same row changes), and the row-level
changes it hands a StateStore rebuild the same state.

Operations are drawn by hypothesis as small integers and interpreted against what the engine currently holds
(which node, which lease, which audit), so most of them are valid protocol steps rather than noise.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

from engine_kit import MANIFEST, NUM_PARAMS, config, digest, finish_job, restore, stats_results, submission
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainnet.core import Coordinator, JoinToken
from trainnet.protocol.messages import Heartbeat, LeaseRequest, Register, TaskSpec
from trainnet.store.state_memory import MemoryStateStore
from trainnet.verify.commit import EMPTY_DIGEST

NODES = [f"n{i}" for i in range(5)]  # n4 starts unregistered
CONFIGS = [
    # verification on: chain, probation, audits, reveals (reveal_s short enough to expire), one failure bans
    config(verify_rate=0.5, verify_probation=1, reveal_s=40.0, audit_claim_s=30.0, quorum=2, grace_s=20.0,
           lease_s=60.0, shards=2, tokens_target=4000),
    # no verification, non-IID shard groups, two leases per node, swarm scaling, a small budget (the run closes)
    config(shard_groups=3, max_leases_per_node=2, quorum=2, target_staleness=1.0, lease_s=50.0,
           tokens_target=2400, grace_s=10.0, max_staleness=2),
    # two failures to ban, a warm start (one long task first), damp mode
    config(verify_rate=0.3, verify_probation=0, ban_after_failures=2, warm_start_tokens=400, stale_mode="damp",
           quorum=3, lease_s=80.0),
]

# Weighted: the steps that move a run forward (leases, uploads, merges, audits) come up most often.
OPS = (["register", "register_token", "heartbeat", "abandon", "ban", "unverifiable", "seen"]
       + ["lease", "submit", "tick", "claim", "verdict", "reveal"] * 2 + ["work", "merge"] * 4)
op_strategy = st.tuples(st.sampled_from(OPS), st.integers(0, 50), st.integers(0, 50),
                        st.sampled_from([0.0, 0.5, 3.0, 15.0, 70.0, 400.0]))


def _pick(items: list[Any], i: int) -> Any:
    return items[i % len(items)] if items else None


def _plain(x: Any) -> Any:
    """A reply as comparable plain data (dataclasses, tuples of records)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {"_type": type(x).__name__, **{k: _plain(v) for k, v in dataclasses.asdict(x).items()}}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def apply_op(core: Coordinator, op: tuple[str, int, int, float], now: float) -> Any:
    """Interpret one drawn operation against the engine's current contents; returns the engine's answer."""
    kind, a, b, _ = op
    node = NODES[a % len(NODES)]
    leases = sorted(core.leases)
    audits = sorted(core.audits)
    if kind == "register":
        return core.register(Register(node, public_key=digest(node), info={"i": a}), now)
    if kind == "register_token":
        return core.register(Register(node, public_key=digest(node), token_id=_pick(["tk", "tk", "nope"], b)), now)
    if kind == "lease":
        return core.lease(LeaseRequest(node), now)
    if kind == "heartbeat":
        t = _pick(leases, b)
        if t is None:
            return core.heartbeat(Heartbeat(node, "t9999999"), now)
        owner = core.leases[t].spec.node_id
        return core.heartbeat(Heartbeat(owner if a % 4 else node, t, {"steps_done": a, "steps": 10}), now)
    if kind == "abandon":
        t = _pick(leases, b)
        return core.abandon(core.leases[t].spec.node_id if t and a % 3 else node, t or "t9999999", now)
    if kind == "work":  # a lease and its honest upload at once
        spec = core.lease(LeaseRequest(node), now)
        if not isinstance(spec, TaskSpec):
            return spec
        lossless = {"ef_in": EMPTY_DIGEST, "ef_out": EMPTY_DIGEST} if b % 2 else {}  # nothing to reveal
        return core.submit(submission(core, spec.task_id, **lossless), now)
    if kind == "submit":
        t = _pick(leases, b)
        if t is None:
            return None
        variant = a % 7
        over: dict[str, Any] = {}
        if variant == 1:
            over["ef_in"] = digest(f"forged{b}")  # breaks the chain (bans when verifying)
        elif variant == 2:
            over["tokens"] = 1
        elif variant == 3:
            over["ef_in"] = EMPTY_DIGEST  # a reset: always allowed
        elif variant == 4:
            over["base_version"] = core.leases[t].spec.base_version + 1
        elif variant == 5:
            over["node_id"] = node  # maybe not the holder
        return core.submit(submission(core, t, **over), now)
    if kind == "tick":
        return core.tick(now)
    if kind == "ban":
        if node not in core.nodes:
            return None
        return core.ban(node, f"operator {b}", now, {"why": b} if b % 2 else None)
    if kind == "claim":
        verifier = node if b % 3 == 0 else f"v{b % 2}"
        return core.claim_audit(verifier, now)
    if kind == "verdict":
        claimed = [t for t in audits if core.audits[t].claimed_by]
        t = _pick(claimed, b)
        if t is None:
            return core.verdict("v0", "t9999999", True, {}, now)
        who = core.audits[t].claimed_by if a % 5 else "v9"
        return core.verdict(who, t, bool(a % 2), {"reason": "mismatch" if a % 2 == 0 else ""}, now)
    if kind == "reveal":
        t = _pick(audits, b)
        if t is None:
            return core.check_reveal(node, "t9999999", now)
        owner = core.audits[t].node_id if a % 4 else node
        return core.reveal(owner, t, f"audits/{digest(t)[:16]}.safetensors", now)
    if kind == "merge":
        job = next(iter(core.jobs.values()), None)
        if job is None:
            return None
        if job.phase == "stats":
            bad = {u["task_id"]: "bad_blob" for k, u in enumerate(job.updates) if (a + k) % 6 == 0}
            core.merge_stats_done(job.job_id, stats_results(core, job.job_id, bad), now)
        else:
            core.merge_applied(job.job_id, f"versions/{job.job_id}.json", now)
        return job.job_id
    if kind == "unverifiable":
        t = _pick(audits, b)
        return core.close_unverifiable(t, "test", now) if t else None
    if kind == "seen":
        return core.seen(node, 1000 + a * 100 + b, now)
    raise AssertionError(kind)


def start(cfg_i: int) -> Coordinator:
    cfg = CONFIGS[cfg_i]
    core = Coordinator.fresh(cfg, MANIFEST, NUM_PARAMS, 0.0)
    core.add_token(JoinToken("tk", digest("secret"), max_keys=3))
    finish_job(core, 0.0)  # version 0 published
    for node in NODES[:4]:
        core.register(Register(node, public_key=digest(node)), 0.0)
    return core


def run(core: Coordinator, ops: list, now: float, after_each: Any = None) -> tuple[float, list]:
    replies = []
    for op in ops:
        now += op[3]
        replies.append(_plain(apply_op(core, op, now)))
        if after_each is not None:
            after_each(core)
    return now, replies


def json_copy(sd: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(sd, allow_nan=False))


def shuffled(sd: dict[str, Any], seed: int) -> dict[str, Any]:
    """The same value with every collection's rows in another order (a SQL store returns rows in any order)."""
    rng = random.Random(seed)
    docs = {}
    for coll, rows in sd["docs"].items():
        items = list(rows.items())
        rng.shuffle(items)
        docs[coll] = dict(items)
    return {"meta": sd["meta"], "docs": docs}


SOFT_NODE_FIELDS = ("last_seen", "counter")  # persisted with the node's next changed row (Coordinator.seen)


def hard(sd: dict[str, Any]) -> dict[str, Any]:
    """A state without the soft per-node fields and without empty collections (a store cannot tell an empty
    collection from an absent one)."""
    docs = {}
    for coll, rows in sd["docs"].items():
        if not rows:
            continue
        if coll == "nodes":
            rows = {k: {f: v for f, v in d.items() if f not in SOFT_NODE_FIELDS} for k, d in rows.items()}
        docs[coll] = rows
    return {"meta": sd["meta"], "docs": docs}


settings_ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow])


@settings_
@given(cfg_i=st.integers(0, len(CONFIGS) - 1), before=st.lists(op_strategy, min_size=10, max_size=60),
       after=st.lists(op_strategy, min_size=1, max_size=25), seed=st.integers(0, 3))
def test_state_dict_restores_an_identical_engine(cfg_i, before, after, seed):
    core = start(cfg_i)
    now, _ = run(core, before, 1.0)
    sd = core.state_dict()
    assert json_copy(sd) == sd, "state_dict must be plain JSON (no tuples, sets, NaN)"
    twin = restore(CONFIGS[cfg_i], shuffled(json_copy(sd), seed))
    assert twin.state_dict() == sd
    core.drain_events()
    core.take_changes()
    # The same operations at the same times: the same answers, events, row changes and state, step by step.
    for op in after:
        now += op[3]
        assert _plain(apply_op(core, op, now)) == _plain(apply_op(twin, op, now)), op
        assert core.drain_events() == twin.drain_events(), op
        a, b = core.take_changes(), twin.take_changes()
        assert (a.meta, a.docs, a.logs, a.events, a.merge_tasks) == (b.meta, b.docs, b.logs, b.events,
                                                                     b.merge_tasks), op
        assert core.state_dict() == twin.state_dict(), op
        # dict order is behaviour too (merge order, evidence order): compare it where the engine iterates
        assert list(core.buffer) == list(twin.buffer), op


@settings_
@given(cfg_i=st.integers(0, len(CONFIGS) - 1), ops=st.lists(op_strategy, min_size=10, max_size=80))
def test_row_changes_rebuild_the_state_in_a_store(cfg_i, ops):
    core = Coordinator.fresh(CONFIGS[cfg_i], MANIFEST, NUM_PARAMS, 0.0)
    store = MemoryStateStore()
    fence = store.acquire_writer("test")

    def commit(c: Coordinator) -> None:
        store.commit(c.take_changes(), fence)

    core.add_token(JoinToken("tk", digest("secret"), max_keys=3))
    commit(core)
    finish_job(core, 0.0)
    commit(core)
    for node in NODES[:4]:
        core.register(Register(node, public_key=digest(node)), 0.0)
        commit(core)
    run(core, ops, 1.0, after_each=commit)
    loaded = store.load_state()
    want = core.state_dict()
    assert hard(loaded) == hard(want)
    # soft fields lag, never lead: what the store holds was true at some earlier step
    for k, d in loaded["docs"].get("nodes", {}).items():
        assert d["last_seen"] <= want["docs"]["nodes"][k]["last_seen"]
        assert d["counter"] <= want["docs"]["nodes"][k]["counter"]
    # and an engine restored from the store holds exactly that state
    assert hard(restore(CONFIGS[cfg_i], loaded).state_dict()) == hard(want)


# ------------------------------------------------------------------ order is state too: explicit cases
def _twins(cfg, prepare):
    """The engine after `prepare`, and its restoration from its state with every collection's rows reversed
    (as a store may return them)."""
    core = Coordinator.fresh(cfg, MANIFEST, NUM_PARAMS, 0.0)
    finish_job(core, 0.0)
    prepare(core)
    core.drain_events()
    sd = json_copy(core.state_dict())
    rev = {"meta": sd["meta"], "docs": {c: dict(reversed(list(rows.items()))) for c, rows in sd["docs"].items()}}
    twin = restore(cfg, rev)
    assert twin.state_dict() == core.state_dict()
    return core, twin


def test_updates_arriving_at_the_same_instant_merge_in_the_same_order_after_a_restore():
    cfg = config(quorum=3)

    def prepare(core: Coordinator) -> None:
        for n in ("n0", "n1", "n2"):
            core.register(Register(n, public_key=digest(n)), 0.0)
        t0 = core.lease(LeaseRequest("n0"), 1.0).task_id
        t1 = core.lease(LeaseRequest("n1"), 1.0).task_id
        core.submit(submission(core, t1), 5.0)  # the later task's upload lands first, at the same instant
        core.submit(submission(core, t0), 5.0)

    core, twin = _twins(cfg, prepare)
    for c in (core, twin):
        t2 = c.lease(LeaseRequest("n2"), 6.0).task_id
        c.submit(submission(c, t2), 6.0)
    a, b = next(iter(core.jobs.values())), next(iter(twin.jobs.values()))
    assert [u["task_id"] for u in a.updates] == [u["task_id"] for u in b.updates]
    assert a.weights == b.weights and core.state_dict() == twin.state_dict()


def test_reveals_expiring_in_the_same_tick_fail_in_the_same_order_after_a_restore():
    cfg = config(verify_rate=1e-12, verify_probation=3, reveal_s=50.0, quorum=100)

    def prepare(core: Coordinator) -> None:
        core.register(Register("n0", public_key=digest("n0")), 0.0)
        for _ in range(3):
            t = core.lease(LeaseRequest("n0"), 1.0).task_id
            core.submit(submission(core, t), 1.0)  # three audits, all due at 51
        assert len(core.audits) == 3

    core, twin = _twins(cfg, prepare)
    core.tick(60.0)
    twin.tick(60.0)
    assert core.nodes["n0"].banned and [e["task_id"] for e in core.nodes["n0"].evidence] == \
        [e["task_id"] for e in twin.nodes["n0"].evidence]
    assert core.state_dict() == twin.state_dict() and core.drain_events() == twin.drain_events()
