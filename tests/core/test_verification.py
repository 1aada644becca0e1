"""Verification inside the engine: the residual commitment chain, audit selection and probation, reveal windows,
verifier claims and verdicts, bans (token revoked, pending updates dropped) and join-token quotas."""

from __future__ import annotations

import math

import pytest
from engine_kit import config, digest, finish_job, join, lease, lease_and_submit, published, submission

from trainnet.core import JoinToken
from trainnet.core.records import REJECT_BANNED, REJECT_STALE, REJECT_WRONG_NODE
from trainnet.core.verification import CHAIN_BAN_REASON, CHAIN_BREAK, NO_REVEAL
from trainnet.protocol.messages import Heartbeat, LeaseRequest, NoTask, Register, TaskSpec
from trainnet.verify.commit import EMPTY_DIGEST

VERIFY = dict(verify_rate=1e-12, verify_probation=0)  # verification on, (almost) nothing audited by rate


# ------------------------------------------------------------------ the residual commitment chain
def test_chain_follows_accepted_updates_and_a_reset_is_always_allowed():
    core = published(config(**VERIFY, quorum=100))
    join(core, "n0")
    a, b, c = digest("A"), digest("B"), digest("C")
    assert lease_and_submit(core, "n0", 1.0, ef_in=EMPTY_DIGEST, ef_out=a)[1].accepted
    assert core.chain["n0"] == a
    assert lease_and_submit(core, "n0", 2.0, ef_in=a, ef_out=b)[1].accepted
    assert lease_and_submit(core, "n0", 3.0, ef_in=EMPTY_DIGEST, ef_out=c)[1].accepted  # reset to zero
    assert core.chain["n0"] == c and not core.nodes["n0"].banned


@pytest.mark.parametrize("ef_in, ef_out", [(digest("B"), digest("D")),  # continues an older link
                                           (digest("C"), "")])            # no commitment to its residual
def test_chain_break_bans_with_evidence_and_drops_the_node_s_work(ef_in, ef_out):
    core = published(config(**VERIFY, quorum=100, max_leases_per_node=2))
    join(core, "n0", "n1")
    lease_and_submit(core, "n0", 1.0, ef_in=EMPTY_DIGEST, ef_out=digest("B"))
    lease_and_submit(core, "n0", 2.0, ef_in=digest("B"), ef_out=digest("C"))
    lease_and_submit(core, "n1", 2.0)
    held = lease(core, "n0", 3.0)        # a second lease the ban must take back
    breaking = lease(core, "n0", 3.0)
    tokens_before = core.tokens_accepted
    reply = core.submit(submission(core, breaking.task_id, ef_in=ef_in, ef_out=ef_out), 4.0)
    assert not reply.accepted and reply.reason == REJECT_BANNED
    node = core.nodes["n0"]
    assert node.banned and node.ban_reason == CHAIN_BAN_REASON
    ev = node.evidence[-1]
    assert ev["reason"] == CHAIN_BREAK and ev["expected"] == digest("C") and ev["ef_in"] == ef_in
    assert ev["task_id"] == breaking.task_id
    # both of its buffered updates are gone (their tokens too), n1's stays; its leases are taken back
    assert [p.node_id for p in core.buffer.values()] == ["n1"]
    assert core.tokens_accepted == tokens_before - 2 * held.tokens
    assert held.task_id not in core.leases and breaking.task_id not in core.leases
    assert core.updates_dropped == 2 and node.updates_dropped == 2


def test_only_accepted_updates_advance_the_chain():
    core = published(config(**VERIFY, quorum=1, max_staleness=0))
    join(core, "n0", "n1")
    lease_and_submit(core, "n0", 1.0, ef_in=EMPTY_DIGEST, ef_out=digest("A"))
    finish_job(core, 1.0)
    old = lease(core, "n0", 2.0)                          # based on version 1 ...
    lease_and_submit(core, "n1", 2.0)
    finish_job(core, 2.0)                                  # ... which is now stale (max_staleness 0)
    stale = core.submit(submission(core, old.task_id, ef_in=digest("A"), ef_out=digest("S")), 3.0)
    assert stale.reason == REJECT_STALE and core.chain["n0"] == digest("A")
    # the refused upload's ef_out is no link of the chain: continuing from it is a break
    nxt = lease(core, "n0", 4.0)
    ok = core.submit(submission(core, nxt.task_id, ef_in=digest("A"), ef_out=digest("B")), 4.0)
    assert ok.accepted and not core.nodes["n0"].banned
    nxt = lease(core, "n0", 5.0)
    core.submit(submission(core, nxt.task_id, ef_in=digest("S"), ef_out=digest("X")), 5.0)
    assert core.nodes["n0"].banned


def test_without_verification_the_chain_is_not_checked():
    core = published(config(verify_rate=0.0, quorum=100))
    join(core, "n0")
    lease_and_submit(core, "n0", 1.0, ef_in=EMPTY_DIGEST, ef_out=digest("A"))
    _, reply = lease_and_submit(core, "n0", 2.0, ef_in=digest("forged"), ef_out="")
    assert reply.accepted and not core.nodes["n0"].banned and not core.chain and not core.audits


# ------------------------------------------------------------------ audit selection
def _audited(audit_key: str, rate: float, n: int = 400) -> set[str]:
    core = published(config(verify_rate=rate, verify_probation=0, audit_key=audit_key, quorum=10**6))
    join(core, "n0", "n1")
    picked = set()
    for i in range(n):
        spec, reply = lease_and_submit(core, f"n{i % 2}", float(i), ef_in=EMPTY_DIGEST, ef_out=EMPTY_DIGEST)
        assert reply.accepted
        if reply.audit != {"reveal": False} or spec.task_id in core.audits:
            picked.add(spec.task_id)
        assert (spec.task_id in core.audits) == (spec.task_id in picked)
    return picked


def test_audit_selection_follows_the_rate_and_is_keyed():
    a = _audited("key-one", 0.25)
    assert 0.18 * 400 <= len(a) <= 0.32 * 400
    assert _audited("key-one", 0.25) == a                  # deterministic given the secret
    b = _audited("key-two", 0.25)
    assert b != a and 0.18 * 400 <= len(b) <= 0.32 * 400   # and unpredictable without it
    assert len(_audited("key-one", 0.05)) < len(a)


def test_probation_audits_a_node_s_first_updates_then_the_rate_applies():
    core = published(config(verify_rate=1e-12, verify_probation=2, quorum=100))
    join(core, "n0", "n1")
    picked = []
    for i in range(4):
        spec, reply = lease_and_submit(core, "n0", float(i))
        picked.append(spec.task_id in core.audits)
        assert reply.audit["reveal"] == picked[-1]  # these carry residual commitments: a reveal is due
    assert picked == [True, True, False, False]
    spec, _ = lease_and_submit(core, "n1", 10.0)  # probation is per node
    assert spec.task_id in core.audits


def test_the_warm_start_task_is_not_on_probation():
    core = published(config(verify_rate=1e-12, verify_probation=1, warm_start_tokens=400, quorum=100))
    join(core, "n0")
    spec = lease(core, "n0", 1.0)
    assert spec.codec == "fp32" and spec.hparams["steps"] == 25
    core.submit(submission(core, spec.task_id), 1.0)
    assert spec.task_id not in core.audits
    finish_job(core, 1.0)  # the warm start is applied as version 1; the next task is a regular one
    spec, _ = lease_and_submit(core, "n0", 2.0)
    assert spec.codec == "q2" and spec.task_id in core.audits


def test_an_update_dropped_unmerged_does_not_serve_probation():
    core = published(config(verify_rate=1e-12, verify_probation=1, quorum=1))
    join(core, "n0")
    first, _ = lease_and_submit(core, "n0", 1.0)
    assert first.task_id in core.audits
    finish_job(core, 2.0, invalid={first.task_id: "bad_blob"})  # the data plane finds its blob corrupt
    assert first.task_id not in core.audits and core.version == 0 and not core.nodes["n0"].banned
    assert core.nodes["n0"].evidence[-1]["reason"] == "bad_blob"
    second, _ = lease_and_submit(core, "n0", 3.0)  # still on probation: its first audit never happened
    assert second.task_id in core.audits
    third, _ = lease_and_submit(core, "n0", 4.0)
    assert third.task_id not in core.audits


# ------------------------------------------------------------------ reveals
def _audited_task(reveal_s: float = 50.0, **cfg):
    core = published(config(verify_rate=1e-12, verify_probation=1, reveal_s=reveal_s, quorum=100, **cfg))
    join(core, "n0", "n1")
    spec, reply = lease_and_submit(core, "n0", 10.0)
    assert reply.audit == {"reveal": True, "deadline": 60.0}
    return core, spec.task_id


def test_reveal_window_checks_and_fills_once():
    core, t = _audited_task()
    assert core.reveals_due("n0") == [t] and core.reveals_due("n1") == []
    assert core.check_reveal("n1", t, 20.0) == REJECT_WRONG_NODE
    assert core.check_reveal("n0", "t9999999", 20.0) == "unknown_audit"
    assert core.claim_audit("v0", 20.0)[:2] == (None, "none_ready")  # not ready before its reveal
    assert core.check_reveal("n0", t, 60.0) is core.audits[t]        # the deadline itself is in time
    assert core.check_reveal("n0", t, 60.001) == "reveal_too_late"
    assert core.audits[t].residual_blob is None                        # checking changes nothing
    assert core.reveal("n0", t, "audits/r1.safetensors", 59.0) == ""
    assert core.reveal("n0", t, "audits/r2.safetensors", 59.5) == "already_revealed"
    assert core.audits[t].residual_blob == "audits/r1.safetensors" and core.audits[t].ready
    assert core.reveals_due("n0") == [] and core.audit_reply("n0", t) == {"reveal": False}
    core.tick(1000.0)  # a revealed audit does not expire
    assert t in core.audits and not core.nodes["n0"].banned
    assert core.claim_audit("v0", 1000.0)[0].task_id == t


def test_lossless_update_needs_no_reveal():
    core = published(config(verify_rate=1e-12, verify_probation=1, quorum=100))
    join(core, "n0")
    spec, reply = lease_and_submit(core, "n0", 1.0, ef_in=EMPTY_DIGEST, ef_out=EMPTY_DIGEST)
    assert reply.audit == {"reveal": False} and core.audits[spec.task_id].ready
    assert core.check_reveal("n0", spec.task_id, 2.0) == "reveal_not_needed"


def test_missed_reveal_fails_the_audit_at_the_first_tick_after_the_deadline():
    core, t = _audited_task(ban_after_failures=1)
    core.tick(60.0)
    assert t in core.audits and not core.nodes["n0"].banned
    core.tick(60.5)
    node = core.nodes["n0"]
    assert t not in core.audits and node.banned and node.audits_failed == 1 and core.audits_failed == 1
    assert node.evidence[-1]["reason"] == NO_REVEAL and node.evidence[-1]["deadline"] == 60.0
    assert core.check_reveal("n0", t, 61.0) == REJECT_BANNED


def test_default_reveal_window_is_ten_leases():
    core = published(config(verify_rate=1e-12, verify_probation=1, lease_s=7.0, quorum=100))
    join(core, "n0")
    _, reply = lease_and_submit(core, "n0", 3.0)
    assert reply.audit == {"reveal": True, "deadline": 73.0}


# ------------------------------------------------------------------ verifier claims and verdicts
def _ready_audits(n_nodes: int = 3, **cfg):
    core = published(config(verify_rate=1e-12, verify_probation=1, quorum=100, audit_claim_s=30.0, **cfg))
    nodes = [f"n{i}" for i in range(n_nodes)]
    join(core, *nodes)
    tasks = [lease_and_submit(core, n, 1.0 + i, ef_in=EMPTY_DIGEST, ef_out=EMPTY_DIGEST)[0].task_id
             for i, n in enumerate(nodes)]
    return core, tasks


def test_claims_hand_out_the_oldest_ready_audit_once():
    core, (t0, t1, t2) = _ready_audits()
    a, why, retry = core.claim_audit("n0", 10.0)          # never its own task
    assert a.task_id == t1 and why == "" and retry is None and a.claim_deadline == 40.0
    assert core.claim_audit("n0", 11.0)[0].task_id == t1   # a lost reply: the same claim again
    assert core.claim_audit("v1", 12.0)[0].task_id == t0
    assert core.claim_audit("v2", 13.0)[0].task_id == t2
    assert core.claim_audit("v3", 14.0) == (None, "none_ready", 2.0)
    # a lapsed claim is free again; its old holder's verdict no longer counts
    a, _, _ = core.claim_audit("v3", 40.5)
    assert a.task_id == t1 and a.claimed_by == "v3"
    assert core.verdict("n0", t1, False, {}, 41.0) == ("not_claimed", False)
    assert core.verdict("v1", t0, True, {}, 43.0) == ("claim_expired", False)  # v1's claim lapsed at 42
    assert core.verdict("v1", "t9999999", True, {}, 43.0) == ("unknown_audit", False)
    assert not core.nodes["n1"].banned and t0 in core.audits


def test_passing_verdict_counts_the_recomputed_steps():
    core, (t0, _, _) = _ready_audits()
    core.claim_audit("v0", 5.0)
    assert core.verdict("v0", t0, True, {"max_diff": 0.0}, 6.0) == ("", False)
    node = core.nodes["n0"]
    assert t0 not in core.audits and node.audits_passed == 1 and core.audits_passed == 1 and not node.banned
    assert core.verify_steps == 10
    logged = core.take_changes().logs["audits"][t0]
    assert logged["status"] == "passed" and logged["detail"]["verifier"] == "v0" and logged["steps"] == 10


def test_failing_verdicts_ban_after_the_configured_count():
    core, tasks = _ready_audits(n_nodes=2, ban_after_failures=2, max_leases_per_node=3)
    t_more = lease_and_submit(core, "n0", 5.0, ef_in=EMPTY_DIGEST, ef_out=EMPTY_DIGEST)[0]
    pending_tokens = core.tokens_accepted
    core.claim_audit("v0", 6.0)
    assert core.verdict("v0", tasks[0], False, {"reason": "mismatch"}, 6.0) == ("", False)
    assert not core.nodes["n0"].banned and core.nodes["n0"].evidence[-1]["reason"] == "mismatch"
    # a second audit of n0 (by rate this time: force it) fails too -> banned now
    core.audits[t_more.task_id] = type(core.audits[tasks[1]])(
        t_more.task_id, "n0", t_more, "b", "s", EMPTY_DIGEST, EMPTY_DIGEST, 5.0, None)
    a = core.claim_audit("v0", 7.0)[0]
    assert a.task_id == tasks[1]                      # older first: n1's
    core.verdict("v0", tasks[1], True, {}, 7.0)
    a = core.claim_audit("v0", 8.0)[0]
    assert a.task_id == t_more.task_id
    assert core.verdict("v0", t_more.task_id, False, {"reason": "mismatch"}, 8.0) == ("", True)
    node = core.nodes["n0"]
    assert node.banned and node.ban_reason == "failed 2 audit(s)" and node.audits_failed == 2
    # n0's buffered updates (both of them) are dropped, n1's stays
    assert [p.node_id for p in core.buffer.values()] == ["n1"]
    assert core.tokens_accepted == pending_tokens - 2 * t_more.tokens


# ------------------------------------------------------------------ bans
def test_ban_drops_pending_work_requeues_it_and_revokes_the_token():
    core = published(config(quorum=100, max_leases_per_node=2))
    core.add_token(JoinToken("tk", digest("secret"), max_keys=5))
    join(core, "n0", token_id="tk")
    join(core, "n1")
    s0, _ = lease_and_submit(core, "n0", 1.0)
    s1, _ = lease_and_submit(core, "n1", 2.0)
    held = lease(core, "n0", 3.0)
    assert core.ban("n0", "operator", 4.0, {"note": "x"}) == 1
    assert core.ban("n0", "again", 4.5) == 0                       # once
    node = core.nodes["n0"]
    assert node.banned and node.ban_reason == "operator" and node.evidence == [{"note": "x"}]
    assert list(core.buffer) == [s1.task_id] and held.task_id not in core.leases
    assert core.tokens_accepted == s1.tokens and core.tokens_outstanding == 0 and core.nodes_banned == 1
    # its shards are trained again, in order: the dropped update's first, then the taken lease's
    again = [lease(core, "n1", 5.0), lease(core, "n1", 5.0)]
    assert [(s.shard_id, s.seed) for s in again] == [(s0.shard_id, s0.seed), (held.shard_id, held.seed)]
    # refused everywhere from now on
    assert "n0 banned" in core.tokens["tk"].revoked
    assert core.register(Register("n3", token_id="tk"), 6.0).reason == "token_revoked"
    assert core.register(Register("n0", public_key=digest("n0")[:64]), 6.0).reason == "banned"
    assert core.lease(LeaseRequest("n0"), 6.0) == NoTask("banned", retry_after_s=math.inf)
    assert core.heartbeat(Heartbeat("n0", held.task_id), 6.0).reason == "banned"
    log = core.take_changes().logs["updates"][s0.task_id]
    assert log["merged_into"] == -1 and log["dropped"] == "node banned"


def test_a_ban_takes_the_participants_other_keys_but_leaves_a_shared_token_open():
    core = published(config(quorum=100, max_leases_per_node=2))
    core.add_token(JoinToken("alice", digest("a"), max_keys=5))
    core.add_token(JoinToken("shared", digest("s"), max_keys=50, shared=True))
    join(core, "a0", "a1", "a2", token_id="alice")
    join(core, "s0", "s1", token_id="shared")
    _, _ = lease_and_submit(core, "a1", 1.0)               # a sibling's buffered update goes too
    held = lease(core, "a2", 1.5)                          # and its lease
    assert core.ban("a0", "failed 1 audit(s)", 2.0) == 0
    for sib in ("a1", "a2"):
        assert core.nodes[sib].banned and core.nodes[sib].ban_reason == "same join token as banned node a0"
    assert core.nodes_banned == 3 and not core.buffer and held.task_id not in core.leases
    assert core.tokens_accepted == 0 and core.tokens["alice"].revoked.startswith("node a0 banned")
    assert core.register(Register("a3", token_id="alice"), 3.0).reason == "token_revoked"
    # a key that joined with the shared --join-token is banned alone: the run stays open to others
    core.ban("s0", "failed 1 audit(s)", 4.0)
    assert core.nodes["s0"].banned and not core.nodes["s1"].banned and core.tokens["shared"].revoked == ""
    assert core.register(Register("s2", token_id="shared"), 5.0).ok
    assert isinstance(core.lease(LeaseRequest("s1"), 5.0), TaskSpec)


def test_ban_during_a_merge_leaves_the_node_out_of_the_plan():
    core = published(config(quorum=3))
    join(core, "n0", "n1", "n2")
    tasks = [lease_and_submit(core, n, 1.0)[0] for n in ("n0", "n1", "n2")]
    job = next(iter(core.jobs.values()))
    assert job.phase == "stats" and len(job.updates) == 3
    core.ban("n1", "evidence elsewhere", 2.0)
    assert job.excluded == {tasks[1].task_id: "node banned"}
    tokens = core.tokens_accepted
    finish_job(core, 3.0)
    assert core.version == 1 and core.updates_merged == 2 and core.updates_dropped == 1
    assert core.tokens_accepted == tokens - tasks[1].tokens


def test_an_audit_of_a_dropped_update_goes_with_it():
    core = published(config(verify_rate=1e-12, verify_probation=1, quorum=100))
    join(core, "n0")
    spec, _ = lease_and_submit(core, "n0", 1.0)
    assert spec.task_id in core.audits
    core.ban("n0", "x", 2.0)
    assert spec.task_id not in core.audits
    assert core.take_changes().logs["audits"][spec.task_id]["status"] == "dropped"


# ------------------------------------------------------------------ join tokens
def test_join_token_quota_counts_distinct_keys():
    core = published(config())
    core.add_token(JoinToken("tk", digest("secret"), max_keys=2))
    assert core.register(Register("n0", token_id="tk"), 1.0).ok
    assert core.register(Register("n1", token_id="tk"), 1.0).ok
    assert core.register(Register("n2", token_id="tk"), 1.0).reason == "token_quota"
    assert core.register(Register("n0", token_id="tk"), 2.0).ok       # a known key re-registers freely
    assert core.register(Register("n3", token_id="nope"), 2.0).reason == "bad_join_token"
    assert core.tokens["tk"].keys == ["n0", "n1"] and "n2" not in core.nodes
    assert core.nodes["n1"].token_id == "tk" and core.nodes["n1"].ordinal == 1
    assert isinstance(core.lease(LeaseRequest("n1"), 3.0), TaskSpec)


def test_a_known_key_cannot_change_its_public_key():
    core = published(config())
    assert core.register(Register("n0", public_key="aa" * 32), 1.0).ok
    assert core.register(Register("n0", public_key="bb" * 32), 2.0).reason == "key_mismatch"
    assert core.nodes["n0"].public_key == "aa" * 32
