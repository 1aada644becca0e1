"""The pruner (server/prune.py) on an in-process coordinator: once a merge is over, the merged updates nobody
audits leave the BlobStore and the job's merge-task rows leave the StateStore; audited updates stay."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_helpers import Harness, tiny_cfg  # noqa: E402


def test_a_finished_merge_leaves_no_queue_rows_and_no_unaudited_update_blobs(tmp_path: Path) -> None:
    h = Harness.open(tmp_path, cfg=tiny_cfg("consensus.verify_rate=0.0", "consensus.verify_probation=0"))
    nodes = [h.node(), h.node()]
    for _ in range(2):
        for n in nodes:
            task = h.lease(n)
            assert h.upload(n, task, h.honest_update(n, task))["accepted"]
        h.drain()
    assert h.core.version == 2
    jobs = ["j0000000", "j0000001", "j0000002"]  # publishing version 0, then two merges
    rows = {j: len(h.svc.state.merge_tasks(j)) for j in jobs}
    assert rows == {"j0000000": 1, "j0000001": 2, "j0000002": 2}, rows  # one shard: (stats +) apply
    assert len(h.svc.blobs.list("updates/")) == 4
    h.rt.pruner.step()
    assert {j: h.svc.state.merge_tasks(j) for j in jobs} == {j: [] for j in jobs}
    assert h.svc.blobs.list("updates/") == []
    h.rt.pruner.step()  # nothing left to do, and nothing breaks
    h.close()
    # A restarted coordinator's pruner reads the events from the start again: the dropped jobs are no trouble.
    h = Harness.open(tmp_path, cfg=tiny_cfg("consensus.verify_rate=0.0", "consensus.verify_probation=0"))
    h.rt.pruner.step()
    assert h.core.version == 2
    h.close()


def test_audited_updates_keep_their_blobs_after_the_queue_rows_go(tmp_path: Path) -> None:
    h = Harness.open(tmp_path)  # the secure defaults: every node's first update is audited
    nodes = [h.node(), h.node()]
    for n in nodes:
        task = h.lease(n)
        assert h.upload(n, task, h.honest_update(n, task))["accepted"]
    h.drain()
    assert h.core.version == 1 and len(h.core.audits) == 2
    h.rt.pruner.step()
    assert h.svc.state.merge_tasks("j0000000") == []
    kept = {a.blob for a in h.core.audits.values()}
    assert kept and kept <= set(h.svc.blobs.list("updates/"))
    h.close()
