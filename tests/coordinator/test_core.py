"""The coordinator's state machine, driven directly with messages and a hand-set clock."""

from __future__ import annotations

import pytest
import torch

from trainnet.coordinator import Coordinator, CoordinatorConfig
from trainnet.protocol.messages import Heartbeat, LeaseRequest, NoTask, Register, TaskSpec, UpdateSubmission

PARAMS = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}


def make(small_corpus, **kw) -> Coordinator:
    cfg = CoordinatorConfig(tokens_target=kw.pop("tokens_target", 10_000), h=2, batch_size=2, seq_len=4,
                            lease_s=10.0, grace_s=5.0, quorum=kw.pop("quorum", 2), outer_momentum=0.0,
                            outer_lr=1.0, **kw)
    coord = Coordinator(cfg, small_corpus.manifest, PARAMS)
    for n in ("a", "b", "c"):
        assert coord.register(Register(n), 0.0).ok
    return coord


def delta(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 2), value), "b": torch.full((2,), value)}


def submit(coord, task: TaskSpec, value: float, now: float, **kw):
    msg = UpdateSubmission(task.node_id, task.task_id, kw.pop("base", task.base_version), kw.pop("d", delta(value)),
                           kw.pop("tokens", task.tokens), kw.pop("steps", task.hparams["steps"]))
    return coord.submit(msg, now)


def test_lease_fixes_task_inputs_publicly(small_corpus):
    coord = make(small_corpus)
    task = coord.lease(LeaseRequest("a"), 1.0)
    assert isinstance(task, TaskSpec)
    assert task.base_version == 0 and task.shard_sha256 == small_corpus.manifest.entry(task.shard_id).sha256
    assert task.manifest_root == small_corpus.manifest.root_hash
    assert task.tokens == 2 * 2 * 4 and task.deadline == 11.0
    assert small_corpus.manifest.entry(task.shard_id).split == "train"


def test_one_lease_per_node_and_unknown_node(small_corpus):
    coord = make(small_corpus)
    assert isinstance(coord.lease(LeaseRequest("a"), 0.0), TaskSpec)
    assert coord.lease(LeaseRequest("a"), 0.0) == NoTask("lease_limit")
    assert coord.lease(LeaseRequest("zz"), 0.0).reason == "unknown_node"


def test_quorum_merges_weighted_mean_and_bumps_version(small_corpus):
    coord = make(small_corpus)
    ta, tb = coord.lease(LeaseRequest("a"), 0.0), coord.lease(LeaseRequest("b"), 0.0)
    r1 = submit(coord, ta, 1.0, 1.0)
    assert r1.accepted and not r1.aggregated and coord.version == 0
    r2 = submit(coord, tb, 3.0, 2.0)
    assert r2.accepted and r2.aggregated and coord.version == 1
    # outer lr 1, no momentum: params = 0 - mean(1, 3)
    assert torch.allclose(coord.params()["w"], torch.full((3, 2), -2.0))
    assert coord.tokens_accepted == ta.tokens + tb.tokens


def test_staleness_weights_and_rejection(small_corpus):
    coord = make(small_corpus, max_staleness=1, staleness_power=1.0)
    old = coord.lease(LeaseRequest("c"), 0.0)  # base version 0
    for _ in range(2):  # advance the model by two versions with a and b
        ta, tb = coord.lease(LeaseRequest("a"), 0.0), coord.lease(LeaseRequest("b"), 0.0)
        submit(coord, ta, 0.0, 1.0)
        submit(coord, tb, 0.0, 1.0)
    assert coord.version == 2
    reply = submit(coord, old, 1.0, 2.0)
    assert not reply.accepted and reply.reason == "too_stale" and reply.staleness == 2
    # the stale task's shard and seed are handed out again: no data silently skipped
    again = coord.lease(LeaseRequest("c"), 3.0)
    assert (again.shard_id, again.seed) == (old.shard_id, old.seed) and again.task_id != old.task_id


def test_staleness_downweights(small_corpus):
    coord = make(small_corpus, max_staleness=4, staleness_power=1.0)
    stale = coord.lease(LeaseRequest("c"), 0.0)
    ta, tb = coord.lease(LeaseRequest("a"), 0.0), coord.lease(LeaseRequest("b"), 0.0)
    submit(coord, ta, 0.0, 1.0)
    submit(coord, tb, 0.0, 1.0)  # version 1, params 0
    fresh = coord.lease(LeaseRequest("a"), 2.0)
    submit(coord, stale, 3.0, 3.0)  # tau=1 -> weight 1/2
    submit(coord, fresh, 0.0, 3.0)  # tau=0 -> weight 1
    # weighted mean = (0.5*3 + 1*0) / 1.5 = 1, damped by mean freshness (0.5 + 1) / 2 = 0.75
    assert torch.allclose(coord.params()["b"], torch.full((2,), -0.75))


def test_expired_lease_requeues_shard_and_refuses_late_answer(small_corpus):
    coord = make(small_corpus)
    task = coord.lease(LeaseRequest("a"), 0.0)
    coord.tick(9.9)
    assert task.task_id in coord.leases
    coord.tick(10.0)
    assert task.task_id not in coord.leases and coord.leases_expired == 1
    late = submit(coord, task, 1.0, 11.0)
    assert not late.accepted and late.reason == "unknown_task"
    again = coord.lease(LeaseRequest("b"), 12.0)
    assert (again.shard_id, again.seed) == (task.shard_id, task.seed)
    kinds = [e.kind for e in coord.drain_events()]
    assert "lease_expired" in kinds and "update_rejected" in kinds


def test_heartbeat_extends_lease(small_corpus):
    coord = make(small_corpus)
    task = coord.lease(LeaseRequest("a"), 0.0)
    assert coord.heartbeat(Heartbeat("a", task.task_id), 8.0).deadline == 18.0
    coord.tick(12.0)
    assert task.task_id in coord.leases
    assert not coord.heartbeat(Heartbeat("b", task.task_id), 8.0).ok


def test_grace_window_merges_without_waiting_for_quorum(small_corpus):
    coord = make(small_corpus, quorum=3)
    ta = coord.lease(LeaseRequest("a"), 0.0)
    submit(coord, ta, 1.0, 1.0)
    coord.tick(5.9)
    assert coord.version == 0
    coord.tick(6.0)
    assert coord.version == 1 and not coord.buffer
    assert torch.allclose(coord.params()["w"], torch.full((3, 2), -1.0 / 3))  # a partial merge: 1/3 step


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"base": 5}, "base_version_mismatch"),
        ({"tokens": 1}, "token_count_mismatch"),
        ({"d": {"w": torch.zeros(3, 2)}}, "bad_shape"),
        ({"d": {"w": torch.zeros(2, 3), "b": torch.zeros(2)}}, "bad_shape"),
        ({"d": {"w": torch.full((3, 2), float("nan")), "b": torch.zeros(2)}}, "non_finite"),
    ],
)
def test_bad_updates_rejected_and_state_unchanged(small_corpus, kw, reason):
    coord = make(small_corpus)
    task = coord.lease(LeaseRequest("a"), 0.0)
    reply = submit(coord, task, 1.0, 1.0, **kw)
    assert not reply.accepted and reply.reason == reason
    assert task.task_id in coord.leases and coord.tokens_accepted == 0 and not coord.buffer
    assert submit(coord, task, 1.0, 2.0).accepted  # the honest answer still goes through


def test_replay_and_wrong_node(small_corpus):
    coord = make(small_corpus, quorum=5)
    task = coord.lease(LeaseRequest("a"), 0.0)
    forged = UpdateSubmission("b", task.task_id, 0, delta(1.0), task.tokens, task.hparams["steps"])
    assert coord.submit(forged, 0.5).reason == "task_not_held"
    assert submit(coord, task, 1.0, 1.0).accepted
    assert submit(coord, task, 1.0, 1.5).reason == "unknown_task"  # a replay of an answered task
    assert coord.updates_accepted == 1


def test_budget_stops_leasing_and_finishes(small_corpus):
    coord = make(small_corpus, tokens_target=32, quorum=10)  # two tasks of 16 tokens
    t1, t2 = coord.lease(LeaseRequest("a"), 0.0), coord.lease(LeaseRequest("b"), 0.0)
    assert coord.lease(LeaseRequest("c"), 0.0).reason == "budget_reached"
    submit(coord, t1, 1.0, 1.0)
    reply = submit(coord, t2, 1.0, 1.0)
    assert reply.aggregated and coord.done and coord.version == 1
    assert coord.lease(LeaseRequest("c"), 2.0).reason == "done"


def test_ban_drops_pending_updates(small_corpus):
    coord = make(small_corpus, quorum=3)
    ta, tb = coord.lease(LeaseRequest("a"), 0.0), coord.lease(LeaseRequest("b"), 0.0)
    submit(coord, ta, 100.0, 1.0)
    assert coord.ban("a", "test", 1.5) == 1
    assert coord.requeue[-1] == (ta.shard_id, ta.seed)  # the dropped update's data is handed out again
    assert coord.tokens_accepted == 0 and coord.lease(LeaseRequest("a"), 2.0).reason == "banned"
    submit(coord, tb, 1.0, 2.0)
    coord.tick(10.0)
    # a's 100 never merged; b's 1 merged alone by the grace window: 1/3 of a full (quorum 3) step
    assert torch.allclose(coord.params()["w"], torch.full((3, 2), -1.0 / 3))


def test_warm_start_is_one_long_task_applied_as_is(small_corpus):
    coord = make(small_corpus, warm_start_tokens=64)
    warm = coord.lease(LeaseRequest("a"), 0.0)
    assert warm.hparams["steps"] == 8 and warm.tokens == 64
    assert warm.codec == "fp32"  # sent whole, whatever the run's codec
    assert coord.lease(LeaseRequest("b"), 0.0).reason == "warming_up"
    assert submit(coord, warm, 2.0, 1.0).aggregated
    assert coord.version == 1 and torch.allclose(coord.params()["b"], torch.full((2,), -2.0))
    after = coord.lease(LeaseRequest("b"), 1.0)
    assert isinstance(after, TaskSpec) and after.codec == "" and after.hparams["steps"] == 2


def test_nesterov_outer_step_matches_torch_sgd():
    from trainnet.consensus import OuterOptimizer

    p = torch.nn.Parameter(torch.zeros(4))
    sgd = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=True)
    ours = OuterOptimizer(0.7, 0.9, nesterov=True)
    flat = torch.zeros(4)
    for step in range(3):
        g = torch.tensor([1.0, -2.0, 0.5, float(step)])
        p.grad = g.clone()
        sgd.step()
        flat = ours.step(flat, g)
    assert torch.allclose(flat, p.detach())


def test_endpoint_mode_rebases_stale_updates(small_corpus):
    coord = make(small_corpus, max_staleness=4, staleness_power=0.0, stale_mode="endpoint")
    stale = coord.lease(LeaseRequest("c"), 0.0)  # from version 0, params 0
    ta, tb = coord.lease(LeaseRequest("a"), 0.0), coord.lease(LeaseRequest("b"), 0.0)
    submit(coord, ta, 1.0, 1.0)
    submit(coord, tb, 1.0, 1.0)  # version 1, params -1 (outer lr 1, no momentum)
    fresh = coord.lease(LeaseRequest("a"), 2.0)
    # c's local endpoint is 0 - 3 = -3; from today's -1 that is a pseudo-gradient of 2, not 3
    submit(coord, stale, 3.0, 3.0)
    submit(coord, fresh, 0.0, 3.0)
    assert torch.allclose(coord.params()["w"], torch.full((3, 2), -1.0 - (2.0 + 0.0) / 2))
    assert set(coord.history) == {0, 1, 2}


def test_unknown_stale_mode_is_refused(small_corpus):
    with pytest.raises(ValueError, match="stale_mode"):
        make(small_corpus, stale_mode="magic")


@pytest.mark.parametrize("probation", [0, 1, 2])
def test_probation_audits_each_nodes_first_updates(small_corpus, probation):
    """With verify_probation = k every node's first k accepted updates are audited; later ones follow
    verify_rate (here so small that no keyed draw selects them). verify_rate 0 audits nothing."""
    coord = make(small_corpus, quorum=3, verify_rate=1e-12, verify_probation=probation)
    audited = {n: [] for n in "ab"}
    for r in range(3):
        for n in "ab":
            t = coord.lease(LeaseRequest(n), float(r))
            assert submit(coord, t, 0.1, float(r)).accepted
            audited[n].append(t.task_id in coord.audits)
    assert audited == {n: [i < probation for i in range(3)] for n in "ab"}
    off = make(small_corpus, verify_rate=0.0, verify_probation=2)
    t = off.lease(LeaseRequest("a"), 0.0)
    assert submit(off, t, 0.1, 0.0).accepted and not off.audits
