"""The memory plan: its formula against measured live tensor memory on CPU, monotonicity, messages, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from shapes import gpt, llama

from trainnet.models import build_model
from trainnet.models.memory import MemoryOptions, ModelShape, estimate, largest_batch, plan_memory
from trainnet.models.memory_cli import plan_memory_cmd
from trainnet.models.memtrack import measure_peak
from trainnet.train.local import ExecOptions, TaskHParams, params_of, run_task

GIB = 1 << 30


def _measured(mcfg, batch: int, seq: int, checkpointing: bool = False, bf16: bool = False) -> int:
    model = build_model(mcfg, seed=0)
    base = params_of(model)
    vocab = ModelShape.of(mcfg).vocab
    tokens = torch.randint(0, vocab, (batch * seq * 4,), generator=torch.Generator().manual_seed(0))
    hp = TaskHParams(steps=2, lr=1e-3, batch_size=batch, seq_len=seq, precision="bf16" if bf16 else "fp32")
    peak, _ = measure_peak(lambda: run_task(model, base, tokens, hp, seed=0,
                                            options=ExecOptions(checkpointing=checkpointing)),
                           keep=[model, base, tokens])
    return peak


def _predicted(mcfg, batch: int, seq: int, checkpointing: bool = False, bf16: bool = False) -> float:
    """The plan's tensor rows (no CUDA context or slack); on CPU the base copy is on the same device."""
    shape = ModelShape.of(mcfg)
    rows = estimate(shape, batch, seq, MemoryOptions(bf16=bf16, checkpointing=checkpointing, fused_adamw=False))
    return sum(b for item, b, where, _ in rows if where == "gpu" and "slack" not in item) + 4 * shape.params


def test_measure_peak_sees_torch_allocations():
    peak, out = measure_peak(lambda: torch.ones(1 << 18).sum())  # 1 MiB of float32, freed before the end
    assert 1 << 20 <= peak < 2 << 20 and float(out) == 1 << 18


@pytest.mark.parametrize("mcfg, batch, seq", [
    (gpt(n_layer=3, n_embd=96, n_head=4, vocab_size=256, block_size=128), 4, 128),
    (llama(layers=3, hidden=96, vocab=700, block=64), 8, 64),
], ids=["gpt-bytes", "llama"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_formula_matches_measured_cpu_peak(mcfg, batch, seq, checkpointing):
    measured = _measured(mcfg, batch, seq, checkpointing)
    predicted = _predicted(mcfg, batch, seq, checkpointing)
    assert 0.85 < predicted / measured < 1.15, (predicted / 2**20, measured / 2**20)


def test_formula_matches_measured_cpu_peak_bf16():
    mcfg = gpt(n_layer=2, n_embd=64, n_head=4, block_size=64)
    measured, predicted = _measured(mcfg, 8, 64, bf16=True), _predicted(mcfg, 8, 64, bf16=True)
    assert 0.85 < predicted / measured < 1.15, (predicted / 2**20, measured / 2**20)


def test_checkpointing_really_saves_memory():
    mcfg = llama(layers=4, hidden=64, block=64)
    assert _measured(mcfg, 8, 64, checkpointing=True) < 0.8 * _measured(mcfg, 8, 64)


def _device(shape, batch=8, seq=256, **opts) -> float:
    return plan_memory(shape, capacity_bytes=1e15, batch_size=batch, seq_len=seq,
                       options=MemoryOptions(**opts)).device_bytes


def test_monotone_in_model_size_batch_and_length():
    small = ModelShape(params=10_000_000, layers=4, hidden=256, intermediate=1024, kv=256, vocab=32_000, gated=False)
    assert _device(small) < _device(replace(small, layers=8, params=20_000_000))
    assert _device(small) < _device(replace(small, hidden=512, params=30_000_000))
    sizes = [_device(small, batch=b) for b in (1, 2, 4, 8, 16)]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert _device(small, seq=128) < _device(small, seq=512)
    # the options only ever help
    assert _device(small, bf16=True) < _device(small)
    assert _device(small, bf16=True, checkpointing=True) < _device(small, bf16=True)
    assert _device(small, optim_8bit=True) < _device(small) and _device(small, offload=True) < _device(small)


def test_real_shapes_grow_with_the_config():
    sizes = [plan_memory(gpt(n_layer=n), gpu="rtx4090", batch_size=8).device_bytes for n in (1, 2, 4)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def test_plan_says_what_makes_it_fit():
    one_b = ModelShape(params=1_235_814_400, layers=16, hidden=2048, intermediate=8192, kv=512, vocab=128_256,
                       gated=True)
    plan = plan_memory(one_b, gpu="rtx4090", batch_size=1, seq_len=2048, precision="bf16")
    assert not plan.fits and plan.suggestion is not None and plan.suggestion.checkpointing
    assert "does not fit" in plan.message and "activation checkpointing" in plan.message
    assert "estimate" in plan.message and "estimate" in plan.table()
    big = plan_memory(one_b, gpu="rtx4090", batch_size=8, seq_len=2048, precision="bf16")
    assert big.suggestion is None and f"batch_size {big.max_batch_size} fits" in big.message
    assert 0 < big.max_batch_size < 8
    assert plan_memory(one_b, gpu="h100", batch_size=1, seq_len=2048, precision="bf16").fits
    ok = plan_memory(gpt(), gpu="rtx3060", batch_size=8)
    assert ok.fits and ok.message.startswith("fits")


def test_largest_batch_grows_with_capacity():
    shape = ModelShape(params=50_000_000, layers=8, hidden=512, intermediate=2048, kv=512, vocab=50_000, gated=False)
    found = [largest_batch(shape, 1024, MemoryOptions(bf16=True), cap * GIB) for cap in (4, 8, 16, 32)]
    assert found == sorted(found) and found[0] < found[-1]
    assert largest_batch(shape, 1024, MemoryOptions(), 0.1 * GIB) == 0


def test_bad_input():
    with pytest.raises(ValueError, match="positive"):
        plan_memory(gpt(), batch_size=0)
    with pytest.raises(KeyError, match="unknown GPU kind"):
        plan_memory(gpt(), gpu="toaster")


def test_cli_table_and_json():
    runner = CliRunner()
    res = runner.invoke(plan_memory_cmd, ["--model", "bench/standard.toml", "--gpu", "rtx3060"])
    assert res.exit_code == 0, res.output
    assert "estimate" in res.output and "AdamW" in res.output and "fits" in res.output
    res = runner.invoke(plan_memory_cmd, ["--model", "bench/standard.toml", "--set", "model.n_layer=4", "--json"])
    data = json.loads(res.output)
    assert data["estimate"] is True and data["shape"]["layers"] == 4
    res = runner.invoke(plan_memory_cmd, ["--set", "model.n_embd=30"])
    assert res.exit_code != 0 and "multiple of model.n_head" in res.output
