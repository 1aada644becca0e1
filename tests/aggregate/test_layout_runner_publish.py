"""The flat layout every plane agrees on, the aggregator's claim/retry loop, and signed version manifests."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from plane_kit import SIGNING_KEY, Plane, delta, plane_config, tiny_corpus

from trainnet.aggregate import keys
from trainnet.aggregate.layout import ParamLayout, chunk_size, chunks
from trainnet.aggregate.publish import ManifestError, Reconstructor, verify_manifest
from trainnet.protocol.auth import public_key_hex

shapes = st.lists(st.lists(st.integers(1, 7), min_size=0, max_size=3), min_size=1, max_size=6)


# ------------------------------------------------------------------ layout
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(shape_list=shapes, cut=st.tuples(st.integers(0, 400), st.integers(0, 400)))
def test_pieces_cover_a_flat_range_exactly_and_unflatten_inverts_flatten(shape_list, cut):
    layout = ParamLayout.from_shapes([(f"t{i}", tuple(s)) for i, s in enumerate(shape_list)])
    flat = torch.arange(layout.numel, dtype=torch.float32)
    params = layout.unflatten(flat)
    assert list(params) == list(layout.names) and torch.equal(layout.flatten(params), flat)
    lo, hi = sorted(min(x, layout.numel) for x in cut)
    rebuilt = [params[name].reshape(-1)[a:b] for name, a, b, _ in layout.pieces(lo, hi)]
    got = torch.cat(rebuilt) if rebuilt else torch.zeros(0)
    assert torch.equal(got, flat[lo:hi])
    pos = lo
    for _, a, b, f in layout.pieces(lo, hi):
        assert f == pos and 0 <= a < b  # consecutive, non-empty
        pos += b - a
    with pytest.raises(ValueError):
        layout.unflatten(torch.zeros(layout.numel + 1))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(lo=st.integers(0, 10_000), n=st.integers(0, 10_000), log_c=st.integers(0, 12))
def test_chunks_follow_the_global_grid(lo, n, log_c):
    c = 1 << log_c
    out = chunks(lo, lo + n, c)
    assert sum(b - a for a, b in out) == n
    for a, b in out:
        assert a < b and a // c == (b - 1) // c  # never across a grid line: the same cuts for any shard's range


def test_chunk_size_is_a_power_of_two_within_the_block():
    for n_rows in (1, 3, 100, 10**6):
        c = chunk_size(n_rows, block=1 << 20, budget_elems=1 << 24)
        assert c & (c - 1) == 0 and (1 << 12) <= c <= (1 << 20) and (1 << 20) % c == 0
    assert chunk_size(1, block=256) == 256  # never more than a block
    assert chunk_size(10, block=1 << 20) > chunk_size(1000, block=1 << 20)  # fewer columns for more rows


# ------------------------------------------------------------------ the aggregator loop
def _plane(make_tiny_config, aggregators: int = 1) -> Plane:
    p = Plane(plane_config(make_tiny_config, **{"aggregate.merge_lease_s": 50.0}), tiny_corpus(), shards=3,
              aggregators=aggregators)
    p.join("n0", "n1")
    for n in ("n0", "n1"):
        spec = p.lease(n)
        p.upload(spec, delta(p.layout, seed=int(spec.task_id[1:])))
    return p


def test_a_failed_merge_task_is_handed_back_and_retried_at_once_with_the_same_result(make_tiny_config):
    """The failed claim is released (not held for merge_lease_s): the other aggregator runs the task in the same
    drain, and the aggregator that failed claims nothing until its back-off is over."""
    clean = _plane(make_tiny_config)
    clean.drain()
    p = _plane(make_tiny_config, aggregators=2)
    flaky = p.rt.aggregators[0]
    real = flaky.run_task
    calls = []

    def fail_once(spec):
        calls.append((spec["shard"], spec["phase"]))
        if len(calls) == 1:
            raise OSError("disk went away")
        return real(spec)

    flaky.run_task = fail_once
    p.drain()
    assert flaky.last_error == "OSError: disk went away" and flaky.tasks_failed == 1
    assert p.core.version == 1 and not p.core.jobs  # no wait for the claim to lapse
    assert calls == [calls[0]] and p.rt.aggregators[1].tasks_done > 0  # the retry ran on the other one
    assert flaky.resume_at > p.now  # ...because the one that failed is backing off
    for what in ("theta", "mom", "pub"):
        assert torch.equal(p.shard_arrays(1, what), clean.shard_arrays(1, what))


def test_a_task_finished_by_a_claimant_that_lost_it_is_not_recorded(make_tiny_config):
    p = _plane(make_tiny_config)
    task = p.state.claim_merge_task("slow", 0.0, 10.0)
    assert task is not None
    other = p.state.claim_merge_task("fast", 11.0, 10.0)  # the slow claim lapsed; somebody else has it
    assert (other["job_id"], other["shard"], other["phase"]) == (task["job_id"], task["shard"], task["phase"])
    assert not p.state.finish_merge_task(task["job_id"], task["shard"], task["phase"], "slow", {"x": 1})
    assert p.state.finish_merge_task(task["job_id"], task["shard"], task["phase"], "fast", {"x": 2})


# ------------------------------------------------------------------ signed manifests
def test_manifests_are_signed_and_checked(make_tiny_config):
    p = _plane(make_tiny_config)
    p.drain()
    signer = public_key_hex(SIGNING_KEY)
    doc = json.loads(p.blobs.get(keys.manifest(1)))
    assert verify_manifest(doc, signer) is doc and doc["signer"] == signer
    with pytest.raises(ManifestError, match="does not verify"):
        verify_manifest(doc | {"created": doc["created"] + 1}, signer)
    with pytest.raises(ManifestError, match="not signed"):
        verify_manifest(doc, "00" * 32)
    with pytest.raises(ManifestError, match="format"):
        verify_manifest({"format": 99}, None)


def test_reconstructor_refuses_a_blob_that_does_not_match_the_manifest(make_tiny_config):
    p = _plane(make_tiny_config)
    p.drain()
    m = p.models.manifest(1)
    key = m["delta"]["shards"][1]["key"]
    good = p.blobs.get(key)
    p.blobs.put(key, good[:-1] + bytes([good[-1] ^ 1]))
    recon = Reconstructor(p.models.manifest, p.blobs.get, p.layout.numel)
    with pytest.raises(ManifestError, match="does not match the manifest"):
        recon.get(1)
    chunk = p.models.manifest(0)["full"]["chunks"][0]
    p.blobs.put(chunk["key"], b"\0" * chunk["nbytes"])
    with pytest.raises(ManifestError, match="does not match the manifest"):
        recon.get(0)
