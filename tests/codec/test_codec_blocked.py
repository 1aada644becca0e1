"""The cache-blocked quantization path (codec/blocked.py) against the whole-tensor reference in values.py.

Groups are shrunk (GROUP_ELEMS patched) so that small tensors cross many group boundaries, partial last
blocks and lengths that are not a multiple of the pack width; every comparison is bit for bit.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from trainnet.codec import blocked, parse_codec
from trainnet.codec.bits import fp16_round_down, fp16_round_up, pack_bits, unpack_bits
from trainnet.codec.values import QuantValues

LENGTHS = [1, 2, 3, 5, 7, 8, 63, 64, 65, 127, 128, 129, 511, 512, 513, 1000, 2049, 4103]


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocked, "GROUP_ELEMS", 64)  # 8 blocks of 8 values, or 8 blocks of any size


def _x(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 10.0 ** torch.randint(-4, 3, (1,), generator=g).item()
    x[torch.rand(n, generator=g) < 0.1] = 0.0  # some constant stretches and exact zeros
    return x


def _ref_encode(vc: QuantValues, x: torch.Tensor, block: int) -> dict[str, torch.Tensor]:
    return vc._encode_reference(x, block)


@pytest.mark.usefixtures("small_groups")
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("block", [1, 3, 5, 8, 64])
def test_blocked_encode_decode_match_reference_across_groups(bits: int, block: int) -> None:
    for n in LENGTHS:
        x = _x(n, seed=n + block)
        vc = QuantValues(bits, block)
        q, scale, offset = blocked.quantize_blocked(x, block, bits)
        ref = _ref_encode(vc, x, block)
        assert torch.equal(q, ref["q"]), (n, block)
        assert torch.equal(scale.view(torch.int16), ref["scale"].view(torch.int16))
        assert torch.equal(offset.view(torch.int16), ref["offset"].view(torch.int16))
        y = blocked.dequantize_blocked(q, scale, offset, n, block, bits)
        assert torch.equal(y, vc._decode_reference(ref, n, block)), (n, block)
        out = torch.full((n,), float("nan"))
        assert blocked.dequantize_blocked(q, scale, offset, n, block, bits, out=out) is out
        assert torch.equal(out, y)


@pytest.mark.usefixtures("small_groups")
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_stochastic_rounding_continues_the_reference_stream(bits: int) -> None:
    fast, ref = QuantValues(bits, 7, stochastic=True, seed=11), QuantValues(bits, 7, stochastic=True, seed=11)
    for n in [1, 100, 7 * 8 * 3 + 2, 1000]:  # successive calls continue one generator, tails included
        x = _x(n, seed=n)
        got, want = fast.encode(x, 64), ref._encode_reference(x, 7)
        assert all(torch.equal(got[k].view(torch.uint8), want[k].view(torch.uint8)) for k in want), n


def test_fp16_directed_rounding_matches_reference_on_every_float16() -> None:
    h = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    h = h[torch.isfinite(h)]
    up, down = torch.full_like(h, 1e38), torch.full_like(h, -1e38)
    mids = ((h[1:].double() + h[:-1].double()) / 2).float()
    x = torch.cat([h, torch.nextafter(h, up), torch.nextafter(h, down), mids,
                   torch.nextafter(mids, up[1:]), torch.nextafter(mids, down[1:]),
                   torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, 7e4, -7e4])])
    for down_, ref_fn in ((True, fp16_round_down), (False, fp16_round_up)):
        bits, value = np.empty(x.numel(), np.int16), np.empty(x.numel(), np.float32)
        blocked._fp16_directed(x.numpy(), down_, bits, value)
        got = torch.from_numpy(bits)
        ok = torch.isfinite(got.view(torch.float16))
        assert ok.float().mean() > 0.99  # only values beyond the float16 range step to Inf
        assert torch.equal(got[ok], ref_fn(x[ok]).view(torch.int16))
        assert torch.equal(torch.from_numpy(value)[ok], got[ok].view(torch.float16).float())
        with pytest.raises(ValueError, match="float16 range"):
            ref_fn(x[~ok])


@pytest.mark.parametrize("bits", [2, 4])
def test_pack_and_unpack_match_bits_module(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    for count in [1, 2, 3, 4, 5, 7, 8, 9, 1001]:
        codes = torch.randint(0, 1 << bits, (count,), generator=g, dtype=torch.uint8)
        buf = np.zeros(count + 8, np.uint8)
        buf[:count] = codes.numpy()
        buf[count:] = 0xFF  # garbage past the codes must not leak into the padding bits
        out = np.empty(-(-count * bits // 8), np.uint8)
        blocked._pack_into(buf, count, bits, out)
        assert torch.equal(torch.from_numpy(out), pack_bits(codes, bits)), count
        m = blocked._unpack_into(out, bits, buf, np.empty(out.size, np.uint16))
        assert m >= count and torch.equal(torch.from_numpy(buf[:count]).long(), unpack_bits(torch.from_numpy(out),
                                                                                             bits, count))


@pytest.mark.usefixtures("small_groups")
@pytest.mark.parametrize("spec", ["q2", "q4:b5", "int8:b3:sr2"])
def test_range_errors_in_a_late_group_raise_like_the_reference(spec: str) -> None:
    x = _x(2000, seed=3)
    for bad, match in ((1e8, "block scale"), (-1e6, "block minimum"), (float("nan"), "NaN or Inf"),
                       (float("inf"), "NaN or Inf")):
        y = x.clone()
        y[1500] = bad
        c = parse_codec(spec)
        with pytest.raises(ValueError, match=match):
            c.encode(y)
        # A failed stochastic encode leaves the generator where it was: the next encode is the first one's.
        assert torch.equal(c.encode(x).parts["q"], parse_codec(spec).encode(x).parts["q"])


def test_empty_and_tiny_tensors() -> None:
    for spec in ["q2", "q4", "int8", "q2:sr"]:
        c = parse_codec(spec)
        for n in [0, 1, 2]:
            x = torch.linspace(-1, 1, n)
            y = c.decode(c.encode(x))
            assert y.shape == (n,) and y.dtype == torch.float32
            assert ((y - x).abs() <= 2 / c.values.levels).all()  # within one step of the 2-wide range


def test_decode_of_nonfinite_parts_still_raises_without_validation() -> None:
    c = parse_codec("q4")
    enc = c.encode(torch.randn(300))
    enc.parts["scale"] = enc.parts["scale"].clone()
    enc.parts["scale"][2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        c.decode(enc, validate=False)


def test_threads_use_separate_workspaces() -> None:
    xs = [_x(300_000 + i, seed=i) for i in range(4)]
    want = [parse_codec("q2").encode(x).parts["q"] for x in xs]
    got: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        for _ in range(3):
            got[i] = parse_codec("q2").encode(xs[i]).parts["q"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(got[i], want[i]) for i in range(4))
