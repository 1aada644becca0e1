"""Task precision is a public task input: honoured by run_task, pinned for verified runs, and never
replayed on a device that cannot reproduce it (no verdict instead of a wrong one)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trainnet.model.gpt import GPT, GPTConfig
from trainnet.protocol.messages import TaskSpec
from trainnet.server.limits import ServerLimits
from trainnet.server.runspec import coordinator_config, task_precision
from trainnet.server.runtime import Runtime
from trainnet.train.local import TaskHParams, params_of, run_task, use_bf16
from trainnet.verify import Unverifiable, Verifier


def test_unknown_precision_is_refused_by_name():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        TaskHParams(steps=1, lr=1e-3, precision="fp16")


def test_auto_is_fp32_on_cpu_and_bf16_is_honoured(small_corpus):
    assert not use_bf16("auto", "cpu") and use_bf16("bf16", "cpu") and not use_bf16("fp32", "cuda")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32))
    base = params_of(model)
    tokens = small_corpus.shard(small_corpus.manifest.ids("train")[0]).tokens
    run = {p: run_task(model, base, tokens, TaskHParams(steps=3, lr=3e-3, batch_size=4, seq_len=32, precision=p),
                       seed=1).delta for p in ("auto", "fp32", "bf16")}
    assert all(torch.equal(run["auto"][k], run["fp32"][k]) for k in base)
    assert any(not torch.equal(run["bf16"][k], run["fp32"][k]) for k in base)


def test_verified_runs_pin_auto_to_fp32(make_tiny_config):
    cfg = make_tiny_config(**{"consensus.verify_rate": 0.0})
    assert task_precision(cfg) == "auto"
    cfg.consensus.verify_rate = 0.1
    assert task_precision(cfg) == "fp32" and coordinator_config(cfg).precision == "fp32"
    cfg.inner.precision = "bf16"
    assert task_precision(cfg) == "bf16"


def test_cpu_verifier_gives_no_verdict_on_bf16_tasks(small_corpus):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32))
    base = params_of(model)
    sid = small_corpus.manifest.ids("train")[0]
    hp = TaskHParams(steps=2, lr=3e-3, batch_size=4, seq_len=32, precision="bf16")
    spec = TaskSpec("r", "t0", "w0", 0, sid, small_corpus.manifest.entry(sid).sha256,
                    small_corpus.manifest.root_hash, 1, hp.to_dict(), 2 * 4 * 32, 0.0, 1e9)
    v = Verifier(model, "fp32")
    with pytest.raises(Unverifiable, match="bf16 tasks are replayed on a GPU"):
        v.check(spec, base, small_corpus.shard(sid).tokens, {k: torch.zeros_like(t) for k, t in base.items()})
    assert v.steps_recomputed == 0


def test_server_refuses_a_bf16_verified_run_without_a_gpu_verifier(make_tiny_config, tmp_path):
    cfg = make_tiny_config()
    cfg.consensus.verify_rate = 0.1
    cfg.inner.precision = "bf16"
    with pytest.raises(ValueError, match="needs a GPU verifier"):
        Runtime.open(cfg, "memory:", "memory:", dataclasses.replace(ServerLimits(), verify_device="cpu"), sync=True)
