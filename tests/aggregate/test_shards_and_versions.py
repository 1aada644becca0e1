"""One run, three ways: merged by 1, 2 or 3 aggregator shards. Every published version must be bit-identical,
and a node following every published delta must hold exactly what a node joining from the latest full version
rebuilds (publish.Reconstructor), at full_every anchors and between them."""

from __future__ import annotations

import pytest
import torch
from plane_kit import Plane, delta, plane_config, tiny_corpus

from trainnet.aggregate.publish import Reconstructor
from trainnet.protocol.messages import LeaseRequest, TaskSpec

NODES = ["n0", "n1", "n2", "n3"]
CORRUPT_TASK = "t0000005"


def _scenario(plane: Plane) -> dict:
    """Four nodes; two deliver per round in rotation (so the others' tasks go stale by a version or two);
    every 7th task is a large update that the norm clip must scale down; one upload has a damaged payload.
    Runs until the final version is published."""
    plane.join(*NODES)
    held: dict[str, TaskSpec] = {}
    seen = {"stale": 0, "excluded": 0}
    for rnd in range(1, 60):
        plane.at(float(rnd))
        for n in NODES:
            if n not in held:
                spec = plane.step(lambda c, n=n: c.lease(LeaseRequest(n), plane.now))
                if isinstance(spec, TaskSpec):
                    held[n] = spec
        for n in (NODES[rnd % 4], NODES[(rnd + 1) % 4]):
            spec = held.pop(n, None)
            if spec is None:
                continue
            i = int(spec.task_id[1:])
            data = plane.encode(spec, delta(plane.layout, seed=i, scale=0.5 if i % 7 == 3 else 1e-2))
            stored = data
            if spec.task_id == CORRUPT_TASK:  # one payload byte flipped after the node signed the upload
                stored = bytearray(data)
                stored[-100] ^= 0xFF
                stored = bytes(stored)
            reply = plane.upload(spec, data=data, stored=stored)
            assert reply.accepted, reply
            seen["stale"] += reply.staleness > 0
        plane.drain()
        if plane.core.done:
            break
    assert plane.core.done
    seen["excluded"] = plane.state.log_get("updates", CORRUPT_TASK)["merged_into"] == -1
    return seen


_RUNS: dict[int, Plane] = {}  # the three runs, made once for this module's tests


@pytest.fixture
def planes(make_tiny_config) -> dict[int, Plane]:
    if not _RUNS:
        corpus = tiny_corpus()
        for shards in (1, 2, 3):
            p = Plane(plane_config(make_tiny_config, **{"aggregate.full_every": 3, "sim.tokens": 640 * 14}),
                      corpus, shards=shards)
            p.seen = _scenario(p)
            _RUNS[shards] = p
    return _RUNS


def test_the_scenario_exercises_staleness_clipping_exclusion_and_anchors(planes):
    p = planes[1]
    assert p.seen["stale"] >= 3 and p.seen["excluded"]
    assert p.state.log_get("updates", CORRUPT_TASK)["dropped"] == "bad_blob"
    versions = p.versions()
    assert versions == list(range(len(versions))) and len(versions) >= 7
    manifests = [p.models.manifest(v) for v in versions]
    assert [m["kind"] for m in manifests][0] == "init" and manifests[-1]["kind"] == "final"
    assert [v for v, m in zip(versions, manifests, strict=True) if m["anchor"]] == \
        [v for v in versions[1:-1] if v % 3 == 0]
    assert len(p.ranges) == 1 and len(planes[3].ranges) == 3


def test_one_two_and_three_shards_publish_bit_identical_versions(planes):
    ref = planes[1]
    versions = ref.versions()
    for shards in (2, 3):
        p = planes[shards]
        assert p.versions() == versions
        assert p.core.state_dict()["meta"] == ref.core.state_dict()["meta"]  # the same decisions throughout
        for v in versions:
            for what in ("theta", "mom", "pub"):
                a, b = ref.shard_arrays(v, what), p.shard_arrays(v, what)
                assert torch.equal(a, b), (shards, v, what)
            m_ref, m = ref.models.manifest(v), p.models.manifest(v)
            for k in ("kind", "exact", "anchor", "numel", "version"):
                assert m[k] == m_ref[k], (shards, v, k)
            # full checkpoints are cut per block, whatever the shards: the very same content-addressed chunks
            assert (m["full"] is None) == (m_ref["full"] is None)
            if m["full"] is not None:
                assert m["full"] == m_ref["full"]
            if m["delta"] is not None:
                assert len(m["delta"]["shards"]) == shards
                assert [(s["lo"], s["hi"]) for s in m["delta"]["shards"]] == p.ranges
                zeros = torch.zeros(p.layout.numel)
                assert torch.equal(p.models.recon.apply_delta(zeros.clone(), m),
                                   ref.models.recon.apply_delta(zeros.clone(), m_ref)), (shards, v)


@pytest.mark.parametrize("shards", [1, 3])
def test_following_deltas_and_joining_late_rebuild_the_same_parameters(planes, shards):
    p = planes[shards]
    versions = p.versions()
    follower = None
    for v in versions:
        m = p.models.manifest(v)
        # a node that followed every version applies this version's delta to what it holds
        if follower is None or m["delta"] is None:
            follower = p.models.recon.full(m)
        else:
            follower = p.models.recon.apply_delta(follower, m)
        # a node joining now starts from the latest full checkpoint at or before v and applies the deltas since
        joiner = Reconstructor(p.models.manifest, p.blobs.get, p.layout.numel)
        start, deltas = joiner.plan(v, None)
        latest_full = max(u for u in versions if u <= v and p.models.manifest(u)["full"] is not None)
        assert start == latest_full and deltas == list(range(latest_full + 1, v + 1))
        assert torch.equal(joiner.get(v), follower), v
        # and both are exactly the reconstruction the aggregators re-base stale updates against (and the
        # verifier replays tasks from)
        assert torch.equal(p.shard_arrays(v, "pub"), follower), v
    # the first and the final versions are published exactly
    assert torch.equal(follower, p.shard_arrays(versions[-1], "theta"))
    assert torch.equal(p.models.recon.full(p.models.manifest(0)), p.layout.flatten(p.spec.init_params()))


def test_published_rounding_does_not_accumulate(planes):
    """Coordinator-side error feedback: each version's delta is the quantized difference between the new exact
    parameters and the previous *reconstruction*, so the published model is off by at most one quantization
    step of that version's delta (plus bf16 rounding at anchors), however many versions came before."""
    p = planes[1]
    versions = p.versions()[1:-1]
    rounded = 0
    for v in versions:
        theta, pub, prev = (p.shard_arrays(v, "theta"), p.shard_arrays(v, "pub"), p.shard_arrays(v - 1, "pub"))
        err = float((pub - theta).abs().max())
        q4_half_step = float((theta - prev).abs().max()) / 15  # 16 levels over a block's [min, max]
        bf16 = float(theta.abs().max()) * 2.0 ** -8 if p.models.manifest(v)["anchor"] else 0.0
        assert err <= 1.001 * q4_half_step + bf16, v
        rounded += err > 0
    assert rounded == len(versions)  # q4 does round: the bound is what is tested, not exactness
