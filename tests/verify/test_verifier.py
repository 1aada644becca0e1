"""Verifier: honest recomputation passes exactly (also through lossy codecs with error feedback); cheats,
lies about the residual and broken commitment chains fail."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trainnet.model.gpt import GPT, GPTConfig
from trainnet.protocol.messages import TaskSpec
from trainnet.protocol.wire import decode_update
from trainnet.train.local import TaskHParams, params_of, run_task
from trainnet.verify import (
    EMPTY_DIGEST,
    CommittingUploader,
    Tolerance,
    Verifier,
    compare,
    reputation,
    residual_digest,
)

STEPS = 6


@pytest.fixture(scope="module")
def setup(small_corpus):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32))
    base = params_of(model)
    ids = small_corpus.manifest.ids("train")
    return model, base, small_corpus, ids


def make_spec(corpus, shard_id: int, task: int, steps: int = STEPS, seed: int = 7) -> TaskSpec:
    hp = TaskHParams(steps=steps, lr=3e-3, batch_size=4, seq_len=32)
    return TaskSpec("r", f"t{task}", "w0", 0, shard_id, corpus.manifest.entry(shard_id).sha256,
                    corpus.manifest.root_hash, seed, hp.to_dict(), steps * 4 * 32, 0.0, 1e9)


def honest_upload(model, base, corpus, spec, up: CommittingUploader):
    delta = run_task(model, base, corpus.shard(spec.shard_id).tokens, TaskHParams(**spec.hparams), spec.seed).delta
    dec = decode_update(up.encode(delta, spec, "w0"))
    return dec.tensors, dec.header.extra, up.last_residuals


@pytest.mark.parametrize("codec", ["fp32", "topk:0.1+q4", "q8"])
def test_honest_tasks_pass_exactly_through_codec_and_error_feedback(setup, codec):
    model, base, corpus, ids = setup
    up, v = CommittingUploader(codec), Verifier(model, codec)
    for task in range(3):  # later tasks carry a non-zero residual when the codec is lossy
        spec = make_spec(corpus, ids[task], task, seed=task)
        claimed, extra, (r_in, r_out) = honest_upload(model, base, corpus, spec, up)
        ok, detail = v.check(spec, base, corpus.shard(spec.shard_id).tokens, claimed, r_in, r_out, extra)
        assert ok and detail["rel_error"] == 0.0 and detail["residual_rel_error"] == 0.0, detail
    if codec != "fp32":
        assert residual_digest(r_in) != EMPTY_DIGEST  # the residual really was in play
    assert v.steps_recomputed == 3 * STEPS


def test_small_nondeterminism_passes_and_cheats_fail(setup):
    model, base, corpus, ids = setup
    spec = make_spec(corpus, ids[0], 0)
    tokens = corpus.shard(ids[0]).tokens
    v = Verifier(model)
    honest = run_task(model, base, tokens, TaskHParams(**spec.hparams), spec.seed).delta
    gen = torch.Generator().manual_seed(1)
    jitter = {k: t * (1 + 1e-3 * torch.randn(t.shape, generator=gen)) for k, t in honest.items()}
    ok, d = v.check(spec, base, tokens, jitter)
    assert ok and 0 < d["rel_error"] < 0.01
    half = run_task(model, base, tokens, TaskHParams(**(spec.hparams | {"steps": STEPS // 2})), spec.seed).delta
    other = run_task(model, base, corpus.shard(ids[5]).tokens, TaskHParams(**spec.hparams), spec.seed).delta
    cheats = {"fewer_steps": half, "random_shard": other, "zeros": {k: torch.zeros_like(t) for k, t in honest.items()},
              "sign_flip": {k: -t for k, t in honest.items()}, "scaled": {k: 3 * t for k, t in honest.items()}}
    for name, claimed in cheats.items():
        ok, d = v.check(spec, base, tokens, claimed)
        assert not ok and d["reason"] == "update_mismatch" and d["rel_error"] > 0.05, (name, d)


def test_lying_about_the_residual_fails_the_commitment(setup):
    model, base, corpus, ids = setup
    up, v = CommittingUploader("topk:0.1+q4"), Verifier(model, "topk:0.1+q4")
    honest_upload(model, base, corpus, make_spec(corpus, ids[0], 0), up)
    spec = make_spec(corpus, ids[1], 1)
    claimed, extra, (r_in, r_out) = honest_upload(model, base, corpus, spec, up)
    tokens = corpus.shard(spec.shard_id).tokens
    fake = {k: t * 0.5 for k, t in r_in.items()}
    ok, d = v.check(spec, base, tokens, claimed, fake, r_out, extra)
    assert not ok and d["reason"] == "residual_commitment" and d["which"] == "ef_in"
    ok, d = v.check(spec, base, tokens, claimed, r_in, {}, extra)
    assert not ok and d["which"] == "ef_out"
    # Committing to a forged r_out inside the task: recomputation exposes it.
    forged = {k: t + 1.0 for k, t in r_out.items()}
    ok, d = v.check(spec, base, tokens, claimed, r_in, forged, extra | {"ef_out": residual_digest(forged)})
    assert not ok and d["reason"] == "residual_mismatch"


def test_residual_digest_and_compare():
    z = {"w": torch.zeros(3)}
    assert residual_digest({}) == residual_digest(z) == EMPTY_DIGEST
    a = residual_digest({"w": torch.tensor([1.0, 0, 0])})
    assert a != residual_digest({"w": torch.tensor([0, 1.0, 0])}) and a != EMPTY_DIGEST
    m = compare({"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 1.0])})
    assert m["cosine"] == 0.0 and m["rel_error"] == pytest.approx(2 ** 0.5)
    assert Tolerance().rel_error == 0.05 and Tolerance().min_cosine == 0.99


def test_reputation_summarises_a_node_record():
    @dataclasses.dataclass
    class Rec:
        node_id: str = "w"
        tasks_leased: int = 5
        updates_accepted: int = 4
        updates_rejected: int = 0
        reject_reasons: dict = dataclasses.field(default_factory=dict)
        leases_expired: int = 1
        tokens_accepted: int = 100
        audits_passed: int = 2
        audits_failed: int = 0
        banned: bool = False
        ban_reason: str = ""
        evidence: list = dataclasses.field(default_factory=list)

    r = reputation(Rec())
    assert r["score"] == pytest.approx(0.75) and r["audits_passed"] == 2
    assert reputation(Rec(banned=True, ban_reason="x"))["score"] == 0.0


def test_task_with_its_own_codec_bypasses_error_feedback_and_verifies(setup):
    model, base, corpus, ids = setup
    up, v = CommittingUploader("topk:0.1+q4"), Verifier(model, "topk:0.1+q4")
    honest_upload(model, base, corpus, make_spec(corpus, ids[0], 0), up)  # leaves a non-zero residual
    spec = dataclasses.replace(make_spec(corpus, ids[1], 1), codec="fp32")
    claimed, extra, (r_in, r_out) = honest_upload(model, base, corpus, spec, up)
    assert extra["ef_in"] == extra["ef_out"] != EMPTY_DIGEST  # the residual is carried over untouched
    ok, d = v.check(spec, base, corpus.shard(spec.shard_id).tokens, claimed, r_in, r_out, extra)
    assert ok and d["rel_error"] == 0.0 and d["residual_rel_error"] == 0.0 and d["codec"] == "fp32"
