"""Merge jobs: the init job, quorum and grace merges through the data plane's two phases, invalid updates,
closing the run, shard ranges, and which rules may run on more than one aggregator shard."""

from __future__ import annotations

import math

import pytest
from engine_kit import (
    MANIFEST,
    NUM_PARAMS,
    config,
    finish_job,
    fresh,
    join,
    lease,
    lease_and_submit,
    published,
    stats_results,
    submission,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from trainnet.consensus.staleness import staleness_weight
from trainnet.core import FINAL, INIT, MERGE, Coordinator, shard_ranges
from trainnet.protocol.messages import LeaseRequest, NoTask, UpdateSubmission


def test_init_job_publishes_version_zero_exactly():
    core = fresh(config(shards=3, block=1024), now=5.0)
    job = next(iter(core.jobs.values()))
    assert (job.kind, job.phase, job.version_from, job.updates) == (INIT, "apply", -1, [])
    tasks = core.take_changes().merge_tasks
    assert [(t["shard"], t["phase"]) for t in tasks] == [(0, "apply"), (1, "apply"), (2, "apply")]
    spec = tasks[0]["spec"]
    assert spec["version_to"] == 0 and spec["publish"] == {"codec": "q4", "full": True, "exact": True}
    assert [(t["spec"]["lo"], t["spec"]["hi"]) for t in tasks] == [(0, 1024), (1024, 3072), (3072, 5000)]
    assert not core.published
    core.merge_applied(job.job_id, "versions/v00000000.json", 6.0)
    ch = core.take_changes()
    assert core.published and core.version == 0 and core.outer_steps == 0 and not core.jobs
    assert ch.logs["versions"]["v00000000"]["manifest"] == "versions/v00000000.json"
    assert [e["kind"] for e in ch.events] == ["version_published"]


def test_quorum_merge_goes_through_stats_and_apply():
    core = published(config(quorum=3, shards=2, staleness_power=0.5, max_staleness=5, outer_lr=0.5))
    join(core, "n0", "n1", "n2", "n3")
    core.take_changes()
    old = lease(core, "n3", 1.0)                        # based on version 0, answered after version 1
    specs = [lease_and_submit(core, n, 2.0 + i)[0] for i, n in enumerate(("n0", "n1", "n2"))]
    job = next(iter(core.jobs.values()))
    assert job.kind == MERGE and job.phase == "stats" and not core.buffer
    assert [u["task_id"] for u in job.updates] == [s.task_id for s in specs]
    stats_tasks = core.take_changes().merge_tasks
    assert [(t["shard"], t["phase"]) for t in stats_tasks] == [(0, "stats"), (1, "stats")]
    assert stats_tasks[1]["spec"]["updates"][2]["task_id"] == specs[2].task_id
    finish_job(core, 6.0)
    assert core.version == 1 and core.outer_steps == 1 and core.updates_merged == 3
    # a stale update (tau = 1) weighs (1 + 1) ** -0.5 of a fresh one; the step is damped by the buffer's freshness
    lease_and_submit(core, "n0", 7.0)
    lease_and_submit(core, "n1", 7.5)
    core.submit(submission(core, old.task_id), 8.0)
    job = next(iter(core.jobs.values()))
    w = staleness_weight(1, 0.5)
    assert job.weights == pytest.approx([1 / (2 + w), 1 / (2 + w), w / (2 + w)])
    assert job.damping == pytest.approx((2 + w) / 3)
    assert [u["staleness"] for u in job.updates] == [0, 0, 1]
    spec = core.merge_task_spec(job, 0)
    assert spec["version_from"] == 1 and spec["outer"] == {"lr": 0.5, "momentum": 0.9, "nesterov": True}
    # norms 3, 4, 5 (sum of squares over the blocks): norm_clip:2 of the median (4) clips nothing here
    norms = {u["task_id"]: n for u, n in zip(job.updates, (3.0, 4.0, 5.0), strict=True)}
    core.take_changes()
    core.merge_stats_done(job.job_id, stats_results(core, job.job_id, norm_of=norms.get), 9.0)
    assert job.phase == "apply" and job.plan["valid"] == [0, 1, 2]
    assert job.plan["norms"] == pytest.approx([3.0, 4.0, 5.0])
    assert job.plan["inner"] == "trimmed_mean" and job.plan["row_scale"] == [1.0, 1.0, 1.0]
    assert [t["phase"] for t in core.take_changes().merge_tasks] == ["apply", "apply"]
    with pytest.raises(ValueError, match="not stats"):
        core.merge_stats_done(job.job_id, {}, 9.5)
    core.merge_applied(job.job_id, "versions/v1.json", 10.0)
    assert core.version == 2 and core.updates_merged == 6
    logs = core.take_changes().logs
    assert logs["updates"][old.task_id]["merged_into"] == 2 and logs["versions"]["v00000002"]["updates"] == 3


def test_norm_clip_scales_rows_above_the_bound():
    core = published(config(quorum=3))
    join(core, "n0", "n1", "n2")
    specs = [lease_and_submit(core, n, 1.0)[0] for n in ("n0", "n1", "n2")]
    job = next(iter(core.jobs.values()))
    norms = dict(zip((s.task_id for s in specs), (1.0, 2.0, 100.0), strict=True))
    core.merge_stats_done(job.job_id, stats_results(core, job.job_id, norm_of=norms.get), 2.0)
    assert job.plan["bound"] == pytest.approx(4.0)          # 2 x the median norm
    assert job.plan["row_scale"] == pytest.approx([1.0, 1.0, 0.04])


def test_the_plan_does_not_depend_on_how_many_shards_measured_it():
    plans = []
    for shards in (1, 2, 3):
        core = published(config(quorum=3, shards=shards, block=512))
        join(core, "n0", "n1", "n2")
        for n in ("n0", "n1", "n2"):
            lease_and_submit(core, n, 1.0)
        job = next(iter(core.jobs.values()))
        nb = math.ceil(NUM_PARAMS / 512)
        per_block = {u["task_id"]: [((k * 7 + i) % 11) * 0.1 + 0.01 for k in range(nb)]
                     for i, u in enumerate(job.updates)}
        results = {}
        for s, (lo, hi) in enumerate(shard_ranges(NUM_PARAMS, shards, 512)):
            results[s] = {"updates": [{"ok": True, "sq": per_block[u["task_id"]][lo // 512:math.ceil(hi / 512)]}
                                      for u in job.updates]}
        core.merge_stats_done(job.job_id, results, 2.0)
        plans.append(job.plan)
    assert plans[0] == plans[1] == plans[2]  # bit-identical floats: sums in global block order


def test_only_one_job_at_a_time_and_the_next_starts_when_a_version_is_published():
    core = published(config(quorum=2))
    join(core, "n0", "n1", "n2", "n3")
    lease_and_submit(core, "n0", 1.0)
    lease_and_submit(core, "n1", 1.0)
    first = next(iter(core.jobs))
    lease_and_submit(core, "n2", 2.0)
    lease_and_submit(core, "n3", 2.0)
    assert list(core.jobs) == [first] and len(core.buffer) == 2  # waiting
    job = core.jobs[first]
    core.merge_stats_done(first, stats_results(core, first), 3.0)
    core.merge_applied(first, "versions/v1.json", 3.0)
    second = next(iter(core.jobs.values()))
    assert second.job_id != first and second.version_from == 1 and len(second.updates) == 2
    assert [u["staleness"] for u in second.updates] == [1, 1] and not core.buffer
    assert job.job_id not in core.jobs


def test_invalid_updates_are_excluded_with_evidence_and_requeued():
    core = published(config(quorum=3))
    join(core, "n0", "n1", "n2")
    specs = [lease_and_submit(core, n, 1.0)[0] for n in ("n0", "n1", "n2")]
    bad = specs[1]
    tokens = core.tokens_accepted
    job = next(iter(core.jobs.values()))
    core.merge_stats_done(job.job_id, stats_results(core, job.job_id, {bad.task_id: "header_mismatch"}), 2.0)
    assert job.excluded == {bad.task_id: "header_mismatch"} and job.plan["valid"] == [0, 2]
    assert core.tokens_accepted == tokens - bad.tokens and core.updates_dropped == 1
    ev = core.nodes["n1"].evidence[-1]
    assert ev["reason"] == "header_mismatch" and ev["task_id"] == bad.task_id and not core.nodes["n1"].banned
    core.merge_applied(job.job_id, "versions/v1.json", 3.0)
    assert core.version == 1 and core.updates_merged == 2
    again = lease(core, "n1", 4.0)
    assert (again.shard_id, again.seed) == (bad.shard_id, bad.seed)


def test_a_job_with_nothing_valid_is_cancelled_without_a_version():
    core = published(config(quorum=2))
    join(core, "n0", "n1")
    specs = [lease_and_submit(core, n, 1.0)[0] for n in ("n0", "n1")]
    job = next(iter(core.jobs.values()))
    core.merge_stats_done(job.job_id, stats_results(core, job.job_id, {s.task_id: "bad_blob" for s in specs}),
                          2.0)
    assert not core.jobs and core.version == 0 and core.tokens_accepted == 0
    assert "merge_cancelled" in [e.kind for e in core.drain_events()]


def test_grace_merge_of_a_partial_buffer_is_scaled_down():
    core = published(config(quorum=4, grace_s=30.0, min_updates=1))
    join(core, "n0")
    lease_and_submit(core, "n0", 10.0)
    core.tick(39.9)
    assert not core.jobs
    core.tick(40.0)
    job = next(iter(core.jobs.values()))
    assert len(job.updates) == 1 and job.damping == pytest.approx(1 / 4)


def test_reaching_the_budget_closes_merges_and_publishes_the_final_version():
    core = published(config(quorum=10, tokens_target=480))  # three 160-token tasks
    join(core, "n0", "n1", "n2", "n3")
    specs = [lease(core, n, 1.0) for n in ("n0", "n1", "n2")]
    assert core.lease(LeaseRequest("n3"), 1.0) == NoTask("budget_reached")
    for i, s in enumerate(specs):
        assert core.submit(submission(core, s.task_id), 2.0 + i).accepted
    assert core.closed and not core.done
    assert core.lease(LeaseRequest("n3"), 5.0).reason == "done"
    job = next(iter(core.jobs.values()))
    assert job.kind == MERGE and len(job.updates) == 3  # below the quorum: the run is closing
    finish_job(core, 6.0)  # the merge, then the final job, which re-publishes exactly
    assert core.done and core.done_at == 6.0 and core.version == 2 and core.outer_steps == 1
    s = specs[0]
    late = UpdateSubmission(s.node_id, s.task_id, s.base_version, s.tokens, 10, "updates/x.tnup", "0" * 64, 1, "q2")
    assert core.submit(late, 7.0).reason == "run_done"


def test_final_job_is_exact_and_full():
    core = published(config(quorum=1, tokens_target=160, full_every=16))
    join(core, "n0")
    lease_and_submit(core, "n0", 1.0)
    merge = next(iter(core.jobs.values()))
    assert core.merge_task_spec(merge, 0)["publish"] == {"codec": "q4", "full": False, "exact": False}
    core.merge_stats_done(merge.job_id, stats_results(core, merge.job_id), 2.0)
    core.merge_applied(merge.job_id, "versions/v1.json", 2.0)
    final = next(iter(core.jobs.values()))
    assert final.kind == FINAL and final.phase == "apply" and final.rule == "mean"
    assert core.merge_task_spec(final, 0)["publish"] == {"codec": "q4", "full": True, "exact": True}


@pytest.mark.parametrize("every, version_to, full", [(4, 3, False), (4, 4, True), (4, 8, True), (1, 5, True)])
def test_full_checkpoints_every_full_every_versions(every, version_to, full):
    core = published(config(quorum=1, full_every=every))
    join(core, "n0")
    core.version = version_to - 1
    lease_and_submit(core, "n0", 1.0)
    job = next(iter(core.jobs.values()))
    assert core.merge_task_spec(job, 0)["publish"]["full"] is full


# ------------------------------------------------------------------ shard ranges
@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 10**7), shards=st.integers(1, 64), block_log=st.integers(0, 22))
def test_shard_ranges_partition_on_block_boundaries(n, shards, block_log):
    block = 1 << block_log
    ranges = shard_ranges(n, shards, block)
    nblocks = -(-n // block)
    assert len(ranges) == min(shards, nblocks)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (_, hi), (lo2, _) in zip(ranges, ranges[1:], strict=False):
        assert hi == lo2                    # contiguous, no overlap
    sizes = []
    for lo, hi in ranges:
        assert lo < hi and lo % block == 0  # non-empty, starts on a block
        assert hi % block == 0 or hi == n
        sizes.append(-(-(hi - lo) // block))
    assert max(sizes) - min(sizes) <= 1     # balanced in whole blocks


# ------------------------------------------------------------------ dense rules and shards
@pytest.mark.parametrize("rule", ["cclip:tau=1", "geomed", "krum", "multikrum:f=1,m=2", "bulyan",
                                  "norm_clip:2+cclip:tau=1", "bucket:2+median"])
def test_dense_rules_refuse_more_than_one_shard(rule):
    with pytest.raises(ValueError, match="shard"):
        Coordinator(config(aggregator=rule, shards=2), MANIFEST, NUM_PARAMS)
    Coordinator(config(aggregator=rule, shards=1), MANIFEST, NUM_PARAMS)


@pytest.mark.parametrize("rule", ["robust", "mean", "median", "trimmed_mean:0.2", "norm_clip:c=3+mean",
                                  "norm_clip:2+trimmed_mean:0.1"])
def test_decomposable_rules_run_on_any_number_of_shards(rule):
    core = Coordinator(config(aggregator=rule, shards=4), MANIFEST, NUM_PARAMS)
    assert core.cfg.shards == 4


def test_a_run_config_asking_for_a_dense_rule_on_shards_is_refused_when_loaded():
    from trainnet.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"'krum' needs the whole parameter vector .*aggregate\.shards 2"):
        load_config(None, ["aggregate.shards=2", 'consensus.aggregator="krum"'])
    assert load_config(None, ["aggregate.shards=2", 'consensus.aggregator="robust"']).aggregate.shards == 2
    assert load_config(None, ["aggregate.shards=1", 'consensus.aggregator="krum"']).aggregate.shards == 1
