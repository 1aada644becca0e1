from __future__ import annotations

import torch

from trainnet.model import GPT, GPTConfig
from trainnet.train import TaskHParams, flatten, run_task, unflatten
from trainnet.train.local import params_of
from trainnet.train.schedule import h_at, lr_at

CFG = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)
HP = TaskHParams(steps=6, lr=3e-3, batch_size=4, seq_len=32)


def _setup():
    torch.manual_seed(0)
    model = GPT(CFG)
    return model, params_of(model)


def test_same_inputs_same_delta_bit_for_bit(small_corpus):
    model, base = _setup()
    tokens = small_corpus.shard(0).tokens
    a = run_task(model, base, tokens, HP, seed=42)
    b = run_task(GPT(CFG), base, tokens, HP, seed=42)  # a fresh model object, as a verifier would have
    assert all(torch.equal(a.delta[k], b.delta[k]) for k in a.delta)
    assert a.tokens == 6 * 4 * 32 and a.steps == 6


def test_seed_and_shard_change_the_delta(small_corpus):
    model, base = _setup()
    a = run_task(model, base, small_corpus.shard(0).tokens, HP, seed=1)
    b = run_task(model, base, small_corpus.shard(0).tokens, HP, seed=2)
    c = run_task(model, base, small_corpus.shard(1).tokens, HP, seed=1)
    assert not torch.equal(flatten(a.delta), flatten(b.delta))
    assert not torch.equal(flatten(a.delta), flatten(c.delta))


def test_training_reduces_loss(small_corpus):
    model, base = _setup()
    res = run_task(model, base, small_corpus.shard(2).tokens, TaskHParams(steps=40, lr=1e-2, batch_size=8, seq_len=32), 3)
    assert res.loss_last < res.loss_first - 0.5
    # the pseudo-gradient points from the local model back to the base
    local = {k: base[k] - res.delta[k] for k in base}
    assert any(not torch.equal(local[k], base[k]) for k in base)


def test_flatten_roundtrip_respects_order():
    like = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    shuffled = {"b": torch.arange(4.0), "a": torch.arange(6.0).view(2, 3)}
    flat = flatten(shuffled, order=like)
    back = unflatten(flat, like)
    assert torch.equal(back["a"], shuffled["a"]) and torch.equal(back["b"], shuffled["b"])


def test_schedules():
    assert lr_at(0.0, 1.0, 0.1, 0.1) < 0.01
    assert abs(lr_at(0.1, 1.0, 0.1, 0.1) - 1.0) < 1e-9
    assert abs(lr_at(1.0, 1.0, 0.1, 0.1) - 0.1) < 1e-9
    assert h_at(0.0, 100, 10, 0.2) == 10 and h_at(0.1, 100, 10, 0.2) == 55 and h_at(0.5, 100, 10, 0.2) == 100
    hp = TaskHParams(steps=10, lr=1.0, progress_start=0.0, progress_end=0.2, lr_warmup=0.1, min_lr_ratio=0.1)
    lrs = [hp.lr_at_step(i) for i in range(10)]
    assert lrs[0] < 0.01 and max(lrs) <= 1.0 and lrs[5] > 0.9
