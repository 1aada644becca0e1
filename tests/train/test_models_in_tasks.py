"""run_task with registry models: a Llama-shape transformers model, prepared tokens, GPU options on CPU."""

from __future__ import annotations

import pytest
import torch

from trainnet.models import ModelConfig, build_model
from trainnet.train import TaskHParams, flatten, run_task
from trainnet.train.local import ExecOptions, params_of

LLAMA = ModelConfig(spec="hf", block_size=32, hf={
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 64})
GPT = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)
HP = TaskHParams(steps=5, lr=3e-3, batch_size=4, seq_len=32)


def _equal(a, b) -> bool:
    return list(a.delta) == list(b.delta) and all(torch.equal(a.delta[k], b.delta[k]) for k in a.delta)


def test_llama_task_is_bit_identical_twice(small_corpus):
    tokens = small_corpus.shard(0).tokens
    base = params_of(build_model(LLAMA, seed=0))
    a = run_task(build_model(LLAMA, seed=0), base, tokens, HP, seed=9)
    b = run_task(build_model(LLAMA, seed=1), base, tokens, HP, seed=9)  # another object, another init: same task
    assert _equal(a, b) and a.loss_first == b.loss_first and a.loss_last == b.loss_last
    c = run_task(build_model(LLAMA, seed=0), base, tokens, HP, seed=10)
    assert not torch.equal(flatten(a.delta), flatten(c.delta))


def test_llama_task_learns(small_corpus):
    model = build_model(LLAMA, seed=0)
    res = run_task(model, params_of(model), small_corpus.shard(2).tokens,
                   TaskHParams(steps=30, lr=1e-2, batch_size=8, seq_len=32), seed=3)
    assert res.loss_last < res.loss_first - 0.5


@pytest.mark.parametrize("mcfg", [GPT, LLAMA], ids=["gpt-bytes", "llama"])
def test_gpu_options_do_not_change_cpu_results(small_corpus, mcfg):
    tokens = small_corpus.shard(1).tokens
    base = params_of(build_model(mcfg, seed=0))
    plain = run_task(build_model(mcfg, seed=0), base, tokens, HP, seed=4)
    model = build_model(mcfg, seed=0)
    ckpt = run_task(model, base, tokens, HP, seed=4, options=ExecOptions(checkpointing=True, compile=True,
                                                                          fused_adamw=True))
    assert _equal(plain, ckpt)  # checkpointing recomputes exactly; compile and fused AdamW are CUDA-only
    assert not getattr(model, "_trainnet_compiled", False)
    again = run_task(model, base, tokens, HP, seed=4)  # switched off again on the same object
    assert _equal(plain, again)


def test_checkpointing_needs_a_known_model(small_corpus):
    class Bigram(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(256, 256)

        def forward(self, x, y):
            return torch.nn.functional.cross_entropy(self.table(x).view(-1, 256), y.reshape(-1))

    model = Bigram()
    run_task(model, params_of(model), small_corpus.shard(0).tokens, HP, seed=0)  # no options: fine
    with pytest.raises(ValueError, match="needs a model from build_model"):
        run_task(model, params_of(model), small_corpus.shard(0).tokens, HP, seed=0,
                 options=ExecOptions(checkpointing=True))


def test_exec_options_on_devices():
    opts = ExecOptions(compile=True, checkpointing=True, fused_adamw=True)
    assert opts.on("cpu") == ExecOptions(compile=False, checkpointing=True, fused_adamw=False)
    assert opts.on("cuda:0") == opts


def test_int32_token_shards_train_like_uint8(small_corpus):
    tokens = small_corpus.shard(0).tokens
    base = params_of(build_model(GPT, seed=0))
    a = run_task(build_model(GPT, seed=0), base, tokens, HP, seed=2)
    b = run_task(build_model(GPT, seed=0), base, tokens.to(torch.int32), HP, seed=2)  # prepared uint16 shards
    assert _equal(a, b)
