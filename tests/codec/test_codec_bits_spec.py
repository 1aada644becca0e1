"""Bit packing and spec parsing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainnet.codec import parse_codec
from trainnet.codec.bits import fp16_round_down, fp16_round_up, pack_bits, packed_len, unpack_bits

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@SETTINGS
@given(width=st.integers(1, 16), data=st.data())
def test_pack_unpack_roundtrip(width: int, data: st.DataObject) -> None:
    codes = data.draw(st.lists(st.integers(0, (1 << width) - 1), max_size=70))
    t = torch.tensor(codes, dtype=torch.int64)
    packed = pack_bits(t, width)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_len(len(codes), width)
    assert torch.equal(unpack_bits(packed, width, len(codes)), t)


@pytest.mark.parametrize("width", [1, 2, 4, 7, 8, 12])
def test_pack_layout_is_lsb_first_bitstream(width: int) -> None:
    codes = torch.tensor([1, 0, 3 % (1 << width), (1 << width) - 1])
    packed = pack_bits(codes, width)
    stream = sum(int(c) << (i * width) for i, c in enumerate(codes))
    assert packed.tolist() == list(stream.to_bytes(packed_len(4, width), "little"))


@pytest.mark.parametrize("width,n", [(2, 3), (12, 3), (1, 5)])
def test_unpack_rejects_nonzero_padding_and_wrong_length(width: int, n: int) -> None:
    packed = pack_bits(torch.zeros(n, dtype=torch.int64), width)
    bad = packed.clone()
    bad[-1] = 0x80
    with pytest.raises(ValueError, match="padding"):
        unpack_bits(bad, width, n)
    with pytest.raises(ValueError, match="bytes"):
        unpack_bits(torch.cat([packed, packed[:1]]), width, n)


def test_fp16_directed_rounding() -> None:
    x = torch.tensor([1.0001, -1.0001, 3e-8, -3e-8, 0.0, 2.0])
    up, down = fp16_round_up(x), fp16_round_down(x)
    assert (up.float() >= x).all() and (down.float() <= x).all()
    assert up[5] == 2.0 and down[5] == 2.0
    with pytest.raises(ValueError, match="float16 range"):
        fp16_round_up(torch.tensor([70000.0]))


@pytest.mark.parametrize(
    "spec,canon",
    [("fp32", "fp32"), ("q8", "int8"), ("int8:b128", "int8:b128"), ("q4:b64", "q4:b64"), ("q2:sr", "q2:sr"),
     ("q2:b32:sr7", "q2:b32:sr7"), ("sign:t", "sign:t"), ("topk:0.015", "topk:0.015"),
     ("topk:.0150:c4096+q2", "topk:0.015+q2"), ("topk:1:c100+fp16", "topk:1:c100+fp16"),
     ("dct64:top4+sign", "dct64:top4+sign"), ("dct32:top2+q4:b8", "dct32:top2+q4:b8")],
)
def test_canonical_specs(spec: str, canon: str) -> None:
    c = parse_codec(spec)
    assert c.spec == canon
    assert parse_codec(c.spec).spec == canon


@pytest.mark.parametrize(
    "spec",
    ["", "fp64", "FP32", "q3", "q4:b0", "q4:b", "q4:bx", "q4:b64:b32", "q4:zz", "fp16:b64", "topk", "topk:0",
     "topk:1.5", "topk:-0.1", "topk:0.1:c0", "topk:0.1:c70000", "topk:0.1:x5", "topk:0.1+topk:0.1",
     "topk:0.1+q2+q2", "q2+q4", "dct64", "dct64:top0", "dct64:top65", "dct1:top1", "dct2000:top1", "dct512:top1",
     "dct64:top4+dct64:top4", "sign:b1:t", "topk:nan", "topk:1e-3", " q4", "q4+", "+q4", "x" * 500, "q2:sr0"],
)
def test_bad_specs_raise_value_error_naming_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="codec spec"):
        parse_codec(spec)


def test_non_string_spec() -> None:
    with pytest.raises(ValueError):
        parse_codec(4)  # type: ignore[arg-type]
