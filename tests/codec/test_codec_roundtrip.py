"""Round-trip properties of every codec: lossless ones exact, lossy ones within their documented bound."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainnet.codec import parse_codec
from trainnet.codec.bits import unpack_bits
from trainnet.codec.codecs import dct_matrix, index_width

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
ALL_SPECS = ["fp32", "fp16", "bf16", "int8", "q4", "q2", "q4:b16:sr3", "sign", "sign:t", "topk:0.015",
             "topk:0.1:c64+q2", "topk:0.25:c16+sign", "dct64:top4+sign", "dct16:top3", "dct8:top2+q4"]


@st.composite
def tensors(draw: st.DrawFn, max_numel: int = 600) -> torch.Tensor:
    ndim = draw(st.integers(1, 3))
    shape = draw(st.lists(st.integers(0, 12 if ndim > 1 else max_numel), min_size=ndim, max_size=ndim))
    arr = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1.0, 1.0, width=32)))
    scale = 10.0 ** draw(st.integers(-6, 3))
    return torch.from_numpy(arr.copy()) * scale


def _quant_bound(spec: str, x: torch.Tensor, factor: float) -> None:
    c = parse_codec(spec)
    enc = c.encode(x)
    y = c.decode(enc)
    block = c.values._block(64)
    sc = enc.parts["scale"].float().repeat_interleave(block)[: x.numel()]
    off = enc.parts["offset"].float().repeat_interleave(block)[: x.numel()]
    err = (y.reshape(-1) - x.reshape(-1)).abs()
    slack = 1e-6 * (off.abs() + c.values.levels * sc) + 1e-30
    assert (err <= factor * sc + slack).all(), float((err - factor * sc).max())


@SETTINGS
@given(x=tensors(), spec=st.sampled_from(ALL_SPECS))
def test_every_codec_roundtrips_shape_dtype_and_layout(x: torch.Tensor, spec: str) -> None:
    c = parse_codec(spec)
    enc = c.encode(x)
    assert [(p.name, p.dtype, p.numel) for p in c.layout(x.numel())] == [
        (k, v.dtype, v.numel()) for k, v in enc.parts.items()]
    y = c.decode(enc)  # also validates
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert c.payload_bytes(x.numel()) == enc.nbytes


@SETTINGS
@given(x=tensors())
def test_float_codecs(x: torch.Tensor) -> None:
    assert torch.equal(parse_codec("fp32").decode(parse_codec("fp32").encode(x)), x)
    assert torch.equal(parse_codec("fp16").decode(parse_codec("fp16").encode(x)), x.half().float())
    assert torch.equal(parse_codec("bf16").decode(parse_codec("bf16").encode(x)), x.bfloat16().float())


@SETTINGS
@given(x=tensors(), spec=st.sampled_from(["int8", "q4", "q2", "q4:b7", "q2:b200", "int8:b1"]))
def test_nearest_quantization_error_at_most_half_scale(x: torch.Tensor, spec: str) -> None:
    _quant_bound(spec, x, 0.5)


@SETTINGS
@given(x=tensors(), spec=st.sampled_from(["q4:sr", "q2:b16:sr5"]))
def test_stochastic_quantization_error_below_one_scale(x: torch.Tensor, spec: str) -> None:
    _quant_bound(spec, x, 1.0)


def test_stochastic_rounding_is_seeded_and_unbiased() -> None:
    x = torch.linspace(-1, 1, 256)
    a, b = parse_codec("q2:sr9"), parse_codec("q2:sr9")
    assert torch.equal(a.encode(x).parts["q"], b.encode(x).parts["q"])
    mean = torch.stack([a.decode(a.encode(x)) for _ in range(400)]).mean(0)
    nearest_err = (parse_codec("q2").decode(parse_codec("q2").encode(x)) - x).abs().mean()
    assert (mean - x).abs().mean() < nearest_err / 5


def test_quantization_known_values() -> None:
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    enc = parse_codec("q2").encode(x)
    assert enc.parts["scale"].tolist() == [1.0] and enc.parts["offset"].tolist() == [0.0]
    assert enc.parts["q"].tolist() == [0b11100100]
    assert torch.equal(parse_codec("q2").decode(enc), x)
    c = parse_codec("q4")
    assert torch.equal(c.decode(c.encode(torch.full((70,), 0.5))), torch.full((70,), 0.5))


def _kept(enc, chunk: int, nchunks: int, k: int) -> torch.Tensor:
    return unpack_bits(enc.parts["idx"], index_width(chunk), nchunks * k).view(nchunks, k)


@SETTINGS
@given(data=st.data(), frac=st.sampled_from([0.015, 0.1, 0.5, 1.0]), chunk=st.sampled_from([4, 16, 100]))
def test_topk_keeps_exactly_the_k_largest_per_chunk(data: st.DataObject, frac: float, chunk: int) -> None:
    n = data.draw(st.integers(1, 400))
    x = torch.from_numpy(data.draw(hnp.arrays(np.float32, n, elements=st.floats(-1e3, 1e3, width=32))))
    c = parse_codec(f"topk:{frac}:c{chunk}")
    ch, nchunks, k = c.geometry(n)
    assert k == min(ch, max(1, math.ceil(frac * ch - 1e-9)))
    enc = c.encode(x)
    idx = _kept(enc, ch, nchunks, k)
    rows = torch.cat([x, x.new_zeros(nchunks * ch - n)]).view(nchunks, ch)
    mask = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, idx, True)
    assert (mask.sum(1) == k).all()
    kept_min = torch.where(mask, rows.abs(), torch.inf).amin(1)
    dropped_max = torch.where(mask, -torch.inf, rows.abs()).amax(1)
    assert (kept_min >= dropped_max).all()
    y = c.decode(enc)
    flat_mask = mask.reshape(-1)[:n]
    assert torch.equal(y[flat_mask], x[flat_mask]) and (y[~flat_mask] == 0).all()
    # The 2-bit variant keeps the same positions and quantizes values within scale/2 (one block per chunk).
    c2 = parse_codec(f"topk:{frac}:c{chunk}+q2")
    e2 = c2.encode(x)
    assert torch.equal(_kept(e2, ch, nchunks, k), idx)
    vals = torch.gather(rows, 1, idx)
    got = torch.gather(torch.cat([c2.decode(e2), x.new_zeros(nchunks * ch - n)]).view(nchunks, ch), 1, idx)
    real = (idx + torch.arange(nchunks)[:, None] * ch) < n  # positions past the tail padding
    sc = e2.parts["scale"].float().view(nchunks, 1)
    off = e2.parts["offset"].float().view(nchunks, 1)
    slack = 1e-6 * (off.abs() + 3 * sc) + 1e-30
    assert ((got - vals).abs() <= 0.5 * sc + slack)[real].all()


def test_topk_bits_per_param_meets_project_target() -> None:
    c = parse_codec("topk:0.015+q2")
    bits = c.bits_per_param(4096 * 256)
    # 62 offsets x 12 bits + 62 x 2 bits + 2 x 16 bits per 4096-chunk = 0.2197 bits/param.
    assert bits == pytest.approx((62 * 12 + 62 * 2 + 32) / 4096)
    assert bits * 1 < 0.96  # per round at H=30, 1000x less than fp32 DDP


def test_dct_matrix_orthonormal_and_full_dct_is_lossless() -> None:
    d = dct_matrix(64).double()
    assert torch.allclose(d @ d.T, torch.eye(64, dtype=torch.float64), atol=1e-6)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    c = parse_codec("dct64:top64")
    assert torch.allclose(c.decode(c.encode(x)), x, atol=1e-5)


def test_dct_top_sign_decode_rule() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64 * 5, generator=g)
    coef = x.view(5, 64) @ dct_matrix(64).T
    top = coef.abs().topk(4, dim=1)
    c = parse_codec("dct64:top4+sign")
    enc = c.encode(x)
    idx = _kept(enc, 64, 5, 4)
    assert torch.equal(idx, top.indices.sort(1).values)
    kept = torch.gather(coef, 1, idx)
    expect = torch.zeros(5, 64).scatter_(1, idx, kept.sign() * top.values.mean(1, keepdim=True).half().float())
    assert torch.allclose(c.decode(enc), (expect @ dct_matrix(64)).reshape(-1), atol=1e-5)
    assert c.bits_per_param(64 * 1000) == pytest.approx((4 * 6 + 4 + 16) / 64)


def test_sign_codec_decode_rule() -> None:
    x = torch.tensor([1.0, -3.0, 0.0, 2.0, -2.0])
    enc = parse_codec("sign:b4").encode(x)
    assert enc.parts["scale"].tolist() == [1.5, 2.0]
    assert parse_codec("sign:b4").decode(enc).tolist() == [1.5, -1.5, 1.5, 1.5, -2.0]


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_encode_rejects_nonfinite(spec: str) -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        parse_codec(spec).encode(torch.tensor([1.0, float("nan"), 2.0]))


@pytest.mark.parametrize("spec", ["fp16", "q4", "int8", "topk:0.5+q2", "sign"])
def test_values_beyond_fp16_range_raise(spec: str) -> None:
    with pytest.raises(ValueError, match="float16 range"):
        parse_codec(spec).encode(torch.tensor([1e6, -1e6, 3.0, 4.0]))


def test_codec_works_on_other_float_dtypes() -> None:
    x = torch.randn(100, generator=torch.Generator().manual_seed(0))
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        enc = parse_codec("q4").encode(x.to(dt))
        assert enc.dtype == str(dt).removeprefix("torch.")
        assert parse_codec("q4").decode(enc).dtype == torch.float32


@pytest.mark.parametrize("spec", ["fp32", "topk:1:c8", "q4"])
def test_encoded_and_decoded_do_not_alias_caller_tensors(spec: str) -> None:
    x = torch.arange(16.0)
    c = parse_codec(spec)
    enc = c.encode(x)
    y = c.decode(enc)
    x.add_(100.0)
    y.add_(1000.0)
    assert torch.allclose(c.decode(enc), torch.arange(16.0), atol=0.5)
