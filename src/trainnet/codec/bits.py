"""Bit packing and careful float16 rounding shared by the codecs.

    packed = pack_bits(codes, width=12)          # uint8, ceil(n*12/8) bytes
    codes = unpack_bits(packed, width=12, n=n)   # int64, raises ValueError on bad input

Bit order (documented in docs/PROTOCOL.md): code i occupies bits [i*w, (i+1)*w) of a little-endian bit
stream; stream bit j is bit (j mod 8) of byte j // 8. Unused bits of the last byte must be zero.
"""

from __future__ import annotations

import torch

FP16_MAX = 65504.0


def packed_len(n: int, width: int) -> int:
    """Bytes needed for n codes of `width` bits."""
    return (n * width + 7) // 8


def pack_bits(codes: torch.Tensor, width: int) -> torch.Tensor:
    """Pack non-negative integer codes (< 2**width) into a uint8 tensor, LSB-first."""
    if not 1 <= width <= 32:
        raise ValueError(f"bit width must be in 1..32, got {width}")
    codes = codes.reshape(-1)
    n = codes.numel()
    if width == 8:
        return codes.to(torch.uint8)
    if width in (1, 2, 4):
        per = 8 // width
        c = codes.to(torch.uint8)  # code << (j*width) stays below 256 for these widths
        pad = (-n) % per
        if pad:
            c = torch.cat([c, c.new_zeros(pad)])
        c = c.view(-1, per)
        out = c[:, 0].clone()
        # A loop over the (at most 8) code slots of a byte, not over elements.
        for j in range(1, per):
            out |= c[:, j] << (j * width)
        return out
    # General width: expand to one bit per entry, then pack 8 bits per byte.
    shifts = torch.arange(width, device=codes.device, dtype=torch.int64)
    bits = (codes.to(torch.int64).unsqueeze(1) >> shifts) & 1
    return pack_bits(bits.reshape(-1), 1)[: packed_len(n, width)]


def check_packed(packed: torch.Tensor, width: int, n: int) -> None:
    """Raise ValueError unless `packed` is a 1-D uint8 tensor of the right length with zero padding bits."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError("packed codes must be a 1-D uint8 tensor")
    if packed.numel() != packed_len(n, width):
        raise ValueError(f"packed codes have {packed.numel()} bytes, expected {packed_len(n, width)}")
    used = (n * width) % 8  # padding (< 8 bits) can only sit in the last byte
    if used and int(packed[-1]) >> used:
        raise ValueError("non-zero padding bits in packed codes")


def unpack_codes_u8(packed: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Fast path for width in (1, 2, 4, 8): uint8 codes, at least n of them (tail codes are padding)."""
    if width == 8:
        return packed
    per = 8 // width
    shifts = torch.arange(per, device=packed.device, dtype=torch.uint8) * width
    return ((packed.unsqueeze(1) >> shifts) & ((1 << width) - 1)).reshape(-1)


def unpack_bits(packed: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Inverse of pack_bits: int64 codes of length n. Raises ValueError on wrong length or non-zero padding."""
    check_packed(packed, width, n)
    if width in (1, 2, 4, 8):
        return unpack_codes_u8(packed, width, n)[:n].to(torch.int64)
    bits = unpack_codes_u8(packed, 1, packed.numel() * 8)[: n * width].view(n, width).to(torch.int64)
    weights = torch.ones(width, dtype=torch.int64, device=packed.device) << torch.arange(
        width, device=packed.device, dtype=torch.int64
    )
    return (bits * weights).sum(dim=1)


def _check_fp16(h: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(h).all():
        raise ValueError(f"{what} exceeds the float16 range (|x| > {FP16_MAX}); use a float codec")
    return h


def fp16_round_up(x: torch.Tensor, what: str = "scale") -> torch.Tensor:
    """Smallest float16 >= x (elementwise), so a stored scale never under-covers a block's range."""
    h = x.to(torch.float16)
    up = torch.nextafter(h, torch.full_like(h, float("inf")))
    return _check_fp16(torch.where(h.float() < x, up, h), what)


def fp16_round_down(x: torch.Tensor, what: str = "offset") -> torch.Tensor:
    """Largest float16 <= x (elementwise), so a stored block minimum never lies above the data."""
    h = x.to(torch.float16)
    down = torch.nextafter(h, torch.full_like(h, float("-inf")))
    return _check_fp16(torch.where(h.float() > x, down, h), what)


def all_finite(t: torch.Tensor) -> bool:
    """True when no element is NaN or Inf: amax and amin propagate NaN and show +-Inf.

    Two read-only reductions, far faster than isfinite().all(), and than max(|t|), whose full-size temporary
    costs a page fault per 4 KB on a large tensor.
    """
    return t.numel() == 0 or (bool(torch.isfinite(t.amax())) and bool(torch.isfinite(t.amin())))
