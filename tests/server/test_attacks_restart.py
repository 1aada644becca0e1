"""Corrupt files, then a restart (issue 10: a truncated update or checkpoint stopped the coordinator; one flipped
byte in the checkpoint started it silently on corrupted weights). SQLite + files in a temp directory; the
coordinator is closed, a file is damaged on disk, and a new Runtime opens the same stores."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_helpers import Harness  # noqa: E402

from trainnet.aggregate import keys  # noqa: E402
from trainnet.aggregate.arrays import read_f32  # noqa: E402
from trainnet.aggregate.publish import ManifestError  # noqa: E402


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[:len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))


def merged_once(root: Path) -> tuple[Harness, list[Any]]:
    """Two nodes, one merge: version 1 is published; the coordinator is closed."""
    h = Harness.open(root)
    nodes = [h.node(), h.node()]
    for n in nodes:
        task = h.lease(n)
        h.upload(n, task, h.honest_update(n, task))
    h.drain()
    assert h.core.version == 1
    results = [t["result"] for j in ("j0000000", "j0000001") for t in h.svc.state.merge_tasks(j)]
    assert results and not any(r.get("recovered") for r in results)  # intact state: no fallback taken
    return h, nodes


def train_round(h: Harness, nodes: list[Any]) -> None:
    """Every node downloads the latest version (as a worker does: signed manifests, sha256 per blob), trains,
    uploads; then the merges run."""
    for n in nodes:
        task = h.lease(n)
        assert h.upload(n, task, h.honest_update(n, task))["accepted"]
    h.drain()


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_pending_update_is_dropped_with_evidence_and_its_shard_requeued(tmp_path: Path, how: str) -> None:
    h = Harness.open(tmp_path)
    a, b = h.node(), h.node()
    ta = h.lease(a)
    assert h.upload(a, ta, h.honest_update(a, ta))["accepted"]  # buffered, not merged (quorum 2)
    blob = h.core.buffer[ta["task_id"]].blob
    shard = tuple(h.core.buffer[ta["task_id"]].shard)
    h.close()
    damage(tmp_path / "blobs" / blob, how)
    h = Harness.open(tmp_path)  # the restart itself reads no update
    assert ta["task_id"] in h.core.buffer
    tb = h.lease(b)
    assert h.upload(b, tb, h.honest_update(b, tb))["accepted"]
    h.drain()
    assert h.core.version == 1 and h.core.updates_merged == 1 and h.core.updates_dropped == 1
    node = h.core.nodes[a.node_id]
    assert node.evidence and node.evidence[-1]["task_id"] == ta["task_id"]
    assert node.evidence[-1]["reason"] in ("bad_blob", "header_mismatch")
    assert h.svc.state.log_get("updates", ta["task_id"])["merged_into"] == -1
    assert shard in [tuple(s) for s in h.core.requeue]  # its data is trained again
    assert h.lease(a)["shard_id"] == shard[0]  # ...first, by the next lease
    h.close()


@pytest.mark.parametrize("what,how", [("theta", "flip"), ("theta", "truncate"), ("mom", "truncate"),
                                      ("pub", "flip")])
def test_corrupt_aggregator_state_is_detected_and_the_run_goes_on(tmp_path: Path, what: str, how: str) -> None:
    h, nodes = merged_once(tmp_path)
    numel = h.svc.spec.layout.numel
    exact = read_f32(h.svc.blobs, keys.agg(0, 1, "theta"), 0, numel)
    published = h.api.audits.base_params(1)
    h.close()
    damage(tmp_path / "blobs" / keys.agg(0, 1, what), how)
    h = Harness.open(tmp_path)
    train_round(h, nodes)
    assert h.core.version == 2 and not any(a.last_error for a in h.rt.aggregators)
    result = next(t["result"] for t in h.svc.state.merge_tasks("j0000002") if t["phase"] == "apply")
    assert result["recovered"], result  # detected, not silently used
    theta2 = read_f32(h.svc.blobs, keys.agg(0, 2, "theta"), 0, numel)
    assert torch.isfinite(theta2).all()
    # the step started from the exact or the published weights of version 1, never from damaged bytes
    flat_pub = h.svc.spec.layout.flatten(published)
    step = (theta2 - exact).abs().max().item()
    assert step < 0.05 and (theta2 - flat_pub).abs().max().item() < 0.05
    h.close()


@pytest.mark.parametrize("what", ["delta", "manifest", "everything"])
def test_corrupt_latest_published_version_is_published_again(tmp_path: Path, what: str) -> None:
    h, nodes = merged_once(tmp_path)
    h.close()
    blobs = tmp_path / "blobs"
    victims = {"delta": [keys.delta(1, 0)], "manifest": [keys.manifest(1)],
               "everything": [keys.delta(1, 0), keys.agg(0, 1, "pub"), keys.agg(0, 1, "theta")]}[what]
    for key in victims:
        damage(blobs / key, "truncate" if what == "delta" else "flip")
    h = Harness.open(tmp_path)
    if what != "manifest":  # what a worker or the verifier rebuilds is checked against the manifest's sha256
        with pytest.raises(ManifestError):
            h.api.audits.base_params(1)
    h.rt.housekeeping()  # the integrity check: version 1 cannot be rebuilt -> published again as version 2
    h.drain()
    assert h.core.version == 2
    assert any(e["kind"] == "version_republished" for e in h.svc.state.events_since(0, 10_000))
    h.rt.housekeeping()
    assert h.rt.integrity.checked == 2
    train_round(h, nodes)  # workers rebuild version 2 from its manifest and train on it
    assert h.core.version == 3 and h.core.updates_merged == 4
    h.close()
