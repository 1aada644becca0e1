"""Cache-blocked CPU kernels for blockwise quantization: the fast path behind QuantValues on CPU.

    q, scale, offset = quantize_blocked(x, block=64, bits=2, gen=None)   # x: 1-D contiguous float32 on CPU
    x_hat = dequantize_blocked(q, scale, offset, x.numel(), block=64, bits=2)

Bit for bit the same results as the whole-tensor code in values.py (QuantValues._encode_reference /
_decode_reference), pinned by tests/codec/test_codec_reference.py. What differs is how memory is used:

- The input is read from memory once, in groups of GROUP_ELEMS values: block minima, maxima, the float16
  offsets and scales, x - offset, the rounding and the packing all run on a group while it is cached, in
  one reused scratch buffer. Groups are 4 MB, in L3 rather than L2, because each torch call costs a few
  microseconds of dispatch and the per-group float16 arithmetic about 20 calls: with 256 KB groups those
  fixed costs outweighed the faster cache (measured on the 2-core box, bench/bench_codec_speed.py).
- Rounding to nearest uses the float32 "magic number" M = 1.5 * 2**23: fl(y + M) = M + rint(y) for
  0 <= y < 2**22, so one fused op (torch.addcdiv: M + d / scale) replaces round, clamp and a slow
  float->uint8 conversion; the code is then the low byte of the float's bit pattern (an int32->uint8 copy).
- Bit packing multiplies 4 codes (one uint32) or 2 codes (one uint16) by a constant that gathers them into
  the top byte without carries; unpacking spreads a byte back with two multiply-and-mask steps.
- Outputs are allocated by numpy, which asks the kernel for huge pages on large arrays; torch's allocator
  faults fresh memory in 4 KB pages, several microseconds each on this machine.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from trainnet.codec.bits import packed_len

GROUP_ELEMS = 1 << 20  # values per group (4 MB of float32 input); see the module docstring for the size
MAGIC = 12582912.0  # 1.5 * 2**23: adding it rounds a float32 in [0, 2**22) to an integer, half to even
# Multipliers that gather the codes of a uint32 (4 codes) or uint16 (2 codes) into its top byte, no carries.
_PACK_MUL = {2: np.uint32(0x01041040), 4: np.uint16(0x0110)}


class NonFiniteBlock(ValueError):
    """A block offset or scale left the float16 range; the caller re-runs the reference code for its error."""


class _Workspace(threading.local):
    """Per-thread scratch buffers for one group, grown on demand and reused across calls."""

    def __init__(self) -> None:
        self.cap = self.rows = self.ucap = 0

    def ensure(self, elems: int, rows: int, noise: bool = False) -> None:
        if elems > self.cap:
            self.cap = elems
            self.f = torch.empty(elems)  # float32 scratch: x - offset, then M + code
            self.f_i32 = self.f.view(torch.int32).numpy()
            self.codes = np.zeros(elems + 8, np.uint8)  # one code per byte, padded to whole words
            self.codes_t = torch.from_numpy(self.codes)
            self.tmp16 = np.empty(elems // 2 + 4, np.uint16)  # unpacking scratch (q4)
        if rows > self.rows:
            self.rows = rows
            self.mn, self.mx = torch.empty(rows), torch.empty(rows)
            self.off, self.sc = torch.empty(rows), torch.empty(rows)
        if noise and elems > self.ucap:
            self.ucap = elems
            self.u = torch.empty(elems)  # uniform noise for stochastic rounding


_WS = _Workspace()
_MAGIC_ROWS: dict[int, torch.Tensor] = {}


def _magic_row(block: int) -> torch.Tensor:
    """A (1, block) row of MAGIC: broadcast over rows it keeps addcdiv vectorized without a full buffer."""
    row = _MAGIC_ROWS.get(block)
    if row is None:
        row = _MAGIC_ROWS.setdefault(block, torch.full((1, block), MAGIC))
    return row


def _geometry(n: int, block: int) -> tuple[int, int]:
    """(blocks per group, number of blocks). A multiple of 8 blocks, so every group starts on a byte boundary
    of the packed codes."""
    return max(8, (GROUP_ELEMS // block) // 8 * 8), -(-n // block)


def _padded_tail(x: torch.Tensor, g0: int, g1: int, block: int) -> torch.Tensor:
    """Blocks g0..g1 where the last one is partial, padded like values._pad_blocks (repeat the last value,
    which changes no block minimum or maximum) into a (g1 - g0, block) copy."""
    n = x.numel()
    t = torch.empty((g1 - g0) * block)
    t[: n - g0 * block] = x[g0 * block :]
    t[n - g0 * block :] = x[n - 1]
    return t.view(g1 - g0, block)


def _fp16_directed(x: np.ndarray, down: bool, bits: np.ndarray, value: np.ndarray) -> None:
    """Largest float16 <= x (down) or smallest >= x (up), elementwise, as in bits.fp16_round_down/_up.

    Writes the float16 bit patterns (int16) to `bits` and their float32 values to `value`. Round to nearest,
    then step one float16 where that overshot: on the sign-magnitude bit pattern a step away from zero is +1,
    toward zero -1, and -0 steps down to the smallest negative subnormal like any negative number. Only +0
    down or -0 up would need a special case, and neither happens: nearest rounding keeps x's sign, so such a
    zero never lies on the wrong side of x. (torch.nextafter on float16, which the reference uses, is a slow
    scalar loop on CPU, and numpy's float16 conversions are software.)
    """
    h = torch.from_numpy(x).to(torch.float16)
    torch.from_numpy(value).copy_(h)
    move = np.greater(value, x) if down else np.less(value, x)
    np.copyto(bits, h.numpy().view(np.int16))
    step = bits >> 15
    step |= 1  # +1 for a positive number, -1 for a negative one: a step away from zero
    np.multiply(move, step, out=step)
    if down:
        np.subtract(bits, step, out=bits)
    else:
        np.add(bits, step, out=bits)
    torch.from_numpy(value).copy_(torch.from_numpy(bits).view(torch.float16))


def _block_params(mn: np.ndarray, mx: np.ndarray, levels: int, off16: np.ndarray, sc16: np.ndarray,
                  off: np.ndarray, scale_safe: np.ndarray) -> None:
    """Offsets and scales of blocks with minima mn and maxima mx, as values._encode_reference computes them.

    Writes float16 bits to off16/sc16 and float32 copies to off/scale_safe (zero scales replaced by 1: such a
    block is constant within float32 precision, so (x - off) / 1 still rounds to code 0 as the reference's
    where(scale > 0, ..., 0) does). Raises NonFiniteBlock where the reference raises (a NaN/Inf offset or
    scale: a sum of finite float16 values cannot overflow float32, so one sum per array detects them).
    """
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf only reach here on the way to the error
        _fp16_directed(mn, True, off16, off)
        span = np.subtract(mx, off)
        np.divide(span, np.float32(levels), out=span)
        _fp16_directed(span, False, sc16, scale_safe)
        if not (np.isfinite(off.sum()) and np.isfinite(scale_safe.sum())):
            raise NonFiniteBlock
    np.add(scale_safe, scale_safe == 0, out=scale_safe)


def _pack_into(codes: np.ndarray, count: int, bits: int, out: np.ndarray) -> None:
    """Pack codes[:count] (each < 2**bits) LSB-first into out (packed_len(count, bits) bytes)."""
    per = 8 // bits
    whole = -(-count // per) * per
    codes[count:whole] = 0  # padding codes must pack as zero bits
    # The product's top byte is the packed byte; shift it down and narrow (faster than a strided byte copy).
    w = codes[:whole].view(np.uint32 if bits == 2 else np.uint16)
    np.multiply(w, _PACK_MUL[bits], out=w)
    np.right_shift(w, 24 if bits == 2 else 8, out=w)
    np.copyto(out, w, casting="unsafe")


def _unpack_into(packed: np.ndarray, bits: int, codes: np.ndarray, tmp16: np.ndarray) -> int:
    """Inverse of _pack_into: one code per byte into codes[: len(packed) * 8 // bits]; returns that length.

    tmp16: uint16 scratch of at least len(packed) elements (in-place ops only: a temporary array per call
    would be a fresh allocation, and page faults, per group)."""
    m = packed.size
    if bits == 2:
        w = codes[: 4 * m].view(np.uint32)
        np.copyto(w, packed, casting="unsafe")
        np.multiply(w, np.uint32(4097), out=w)  # byte b at bits 0-7 and 12-19
        np.bitwise_and(w, np.uint32(0x000F000F), out=w)  # low nibble at bits 0-3, high nibble at 16-19
        np.multiply(w, np.uint32(65), out=w)  # each nibble again 6 bits higher
        np.bitwise_and(w, np.uint32(0x03030303), out=w)  # code j in byte j
        return 4 * m
    w, t = codes[: 2 * m].view(np.uint16), tmp16[:m]
    np.copyto(w, packed, casting="unsafe")
    np.left_shift(w, 4, out=t)  # high nibble into bits 8-11
    np.bitwise_or(w, t, out=w)
    np.bitwise_and(w, np.uint16(0x0F0F), out=w)  # code 0 in byte 0, code 1 in byte 1
    return 2 * m


def quantize_blocked(x: torch.Tensor, block: int, bits: int,
                     gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed codes uint8, scale float16, offset float16) of a 1-D contiguous float32 CPU tensor x.

    gen: None for nearest rounding, else the generator for stochastic rounding; it is left untouched when
    this raises. Raises NonFiniteBlock where the reference implementation raises a float16-range error.
    """
    n, levels = x.numel(), (1 << bits) - 1
    rows, nb = _geometry(n, block)
    nfull = n // block
    ws = _WS
    ws.ensure(min(rows, nb) * block, min(rows, nb), noise=gen is not None)
    last0 = (nfull // rows) * rows  # first block of the last group
    groups = list(x[: last0 * block].view(last0, block).split(rows)) if last0 else []
    if nb > last0:  # the last group; a copy padded like values._pad_blocks if its last block is partial
        groups.append(x[last0 * block :].view(-1, block) if nb == nfull else _padded_tail(x, last0, nb, block))
    magic = _magic_row(block)
    packed = np.empty(packed_len(n, bits), np.uint8)
    sc16, off16 = np.empty(nb, np.int16), np.empty(nb, np.int16)
    state = gen.get_state() if gen is not None else None
    try:
        for i, xr in enumerate(groups):
            g0, r = i * rows, xr.shape[0]
            count = min(n, (g0 + r) * block) - g0 * block
            mn, mx, off, sc = ws.mn[:r], ws.mx[:r], ws.off[:r], ws.sc[:r]
            torch.amin(xr, dim=1, out=mn)
            torch.amax(xr, dim=1, out=mx)
            _block_params(mn.numpy(), mx.numpy(), levels, off16[g0 : g0 + r], sc16[g0 : g0 + r], off.numpy(),
                          sc.numpy())
            d = ws.f[: r * block].view(r, block)
            torch.sub(xr, off.unsqueeze(1), out=d)
            if gen is None:  # y = d / scale lies in [0, levels] up to float32 rounding: no clamp needed
                torch.addcdiv(magic.expand(r, block), d, sc.unsqueeze(1), out=d)
            else:  # floor(y + u) can reach levels + 1, hence the clamp (as in the reference)
                u = ws.u[: r * block].view(r, block)
                torch.div(d, sc.unsqueeze(1), out=d)
                torch.rand(r, block, generator=gen, out=u)
                d.add_(u).floor_().clamp_(0, levels).add_(MAGIC)
            first, last = g0 * block * bits // 8, packed_len(g0 * block + count, bits)
            # The code is the low byte of M + code's bit pattern: numpy's int32 -> uint8 cast wraps (keeps it).
            if bits == 8:
                np.copyto(packed[first:last], ws.f_i32[:count], casting="unsafe")
            else:
                np.copyto(ws.codes[:count], ws.f_i32[:count], casting="unsafe")
                _pack_into(ws.codes, count, bits, packed[first:last])
    except BaseException:
        if gen is not None:
            gen.set_state(state)
        raise
    return (torch.from_numpy(packed), torch.from_numpy(sc16).view(torch.float16),
            torch.from_numpy(off16).view(torch.float16))


def dequantize_blocked(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, n: int, block: int,
                       bits: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """float32 values offset + code * scale of n packed codes; the inverse of quantize_blocked.

    out: a contiguous float32 CPU tensor of n elements to write into (the benchmark uses it to separate the
    kernel from the cost of faulting in a fresh output); by default a new one.
    """
    rows, nb = _geometry(n, block)
    nfull = n // block
    ws = _WS
    ws.ensure(min(rows, nb) * block, min(rows, nb))
    if out is None:
        out = torch.from_numpy(np.empty(n, np.float32))
    out_full = out[: nfull * block].view(nfull, block)
    packed = q.numpy()
    for g0 in range(0, nb, rows):
        g1 = min(nb, g0 + rows)
        r, count = g1 - g0, min(n, g1 * block) - g0 * block
        first, last = g0 * block * bits // 8, packed_len(g0 * block + count, bits)
        if bits == 8:
            codes = torch.from_numpy(packed[first:last])
        else:
            codes = ws.codes_t[: _unpack_into(packed[first:last], bits, ws.codes, ws.tmp16)][:count]
        f = ws.f[: r * block]
        f[:count].copy_(codes)
        f2 = f.view(r, block)
        sc_col, off_col = ws.sc[:r].copy_(scale[g0:g1]).unsqueeze(1), ws.off[:r].copy_(offset[g0:g1]).unsqueeze(1)
        # code * scale is exact (8-bit code, 11-bit scale), so mul then add rounds once, like addcmul.
        torch.mul(f2, sc_col, out=f2)
        if g1 <= nfull:
            torch.add(f2, off_col, out=out_full[g0:g1])
        else:  # the group with the partial last block: values past n are computed, then dropped
            f2.add_(off_col)
            out[g0 * block :].copy_(f[:count])
    return out
