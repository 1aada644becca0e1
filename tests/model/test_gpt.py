from __future__ import annotations

import math

import torch
import torch.nn as nn

from trainnet.model import GPT, GPTConfig
from trainnet.train import TaskHParams, run_task


def test_sizes_span_tests_to_gpt2_small():
    tiny = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64))
    assert tiny.num_params() < 200_000
    gpt2 = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
    # count without allocating: 12 * 12 * d^2 (blocks) + vocab*d + block*d + layernorms
    d = gpt2.n_embd
    approx = 12 * gpt2.n_layer * d * d + gpt2.vocab_size * d + gpt2.block_size * d
    assert 120e6 < approx < 130e6


def test_initial_loss_is_near_uniform():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16))
    x, y = torch.randint(0, 256, (4, 16)), torch.randint(0, 256, (4, 16))
    _, loss = model(x, y)
    assert abs(float(loss.detach()) - math.log(256)) < 0.1


def test_bring_your_own_module_trains():
    class Bigram(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(256, 256)

        def forward(self, x, y):
            return nn.functional.cross_entropy(self.table(x).view(-1, 256), y.reshape(-1))

    torch.manual_seed(0)
    model = Bigram()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokens = torch.tensor(list(b"abababababcbcbcbcbcb" * 50), dtype=torch.uint8)
    res = run_task(model, base, tokens, TaskHParams(steps=30, lr=0.1, batch_size=4, seq_len=8), seed=1)
    assert set(res.delta) == {"table.weight"}
    assert res.loss_last < res.loss_first - 1.0
