"""Value codecs: how a flat vector of float values is stored. Used alone (dense) or after a sparsifier.

    vc = QuantValues(bits=2, block=None)      # block=None: the context's default block
    parts = vc.encode(v, default_block=64)
    v_hat = vc.decode(parts, v.numel(), default_block=64)

Quantization is asymmetric (affine) per block: x ~ offset + q * scale with q in [0, 2**bits - 1];
offset is the block minimum rounded DOWN to float16, scale = (max - offset) / (2**bits - 1) rounded UP to
float16, so with nearest rounding |x - x_hat| <= scale / 2 for every element (up to float32 arithmetic).
Stochastic rounding (q = floor(y + u), u ~ U[0,1) from a seeded generator) is unbiased with error < scale.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from trainnet.codec.base import PartSpec
from trainnet.codec.bits import (
    FP16_MAX,
    all_finite,
    check_packed,
    fp16_round_down,
    fp16_round_up,
    pack_bits,
    packed_len,
    unpack_codes_u8,
)
from trainnet.codec.blocked import NonFiniteBlock, dequantize_blocked, quantize_blocked


def _nblocks(n: int, block: int) -> int:
    return -(-n // block) if n > 0 else 0


def _pad_blocks(v: torch.Tensor, block: int, fill: float | None = None) -> torch.Tensor:
    """View v as (nblocks, block), padding the tail with `fill` (default: repeat the last value)."""
    n = v.numel()
    pad = (-n) % block
    if pad:
        tail = v[-1:].expand(pad) if fill is None else v.new_full((pad,), fill)
        v = torch.cat([v, tail])
    return v.view(-1, block)


class ValueCodec(ABC):
    """Stores a flat float32 vector; `default_block` is supplied by the enclosing codec."""

    lossless = False
    rejects_nonfinite = False  # True when encode raises ValueError on every input with a NaN or Inf

    @property
    @abstractmethod
    def spec(self) -> str: ...

    @abstractmethod
    def layout(self, n: int, default_block: int) -> list[PartSpec]: ...

    @abstractmethod
    def encode(self, v: torch.Tensor, default_block: int) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def decode(self, parts: dict[str, torch.Tensor], n: int, default_block: int) -> torch.Tensor: ...

    def check(self, parts: dict[str, torch.Tensor], n: int, default_block: int) -> None:
        """Content checks beyond dtype/length/finiteness. Raise ValueError."""
        return None

    def decodes_finite(self, parts: dict[str, torch.Tensor]) -> bool:
        """True when decoding these parts cannot give NaN or Inf (lets decode skip a full pass over its output)."""
        return False


class FloatValues(ValueCodec):
    """fp32 / fp16 / bf16: the values cast to a float dtype (fp32 is lossless)."""

    NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = self.NAMES[name]
        self.lossless = name == "fp32"

    @property
    def spec(self) -> str:
        return self.name

    def layout(self, n: int, default_block: int) -> list[PartSpec]:
        return [PartSpec("v", self.dtype, n)]

    def encode(self, v: torch.Tensor, default_block: int) -> dict[str, torch.Tensor]:
        if self.dtype == torch.float16 and v.numel() and v.abs().max() > FP16_MAX:
            raise ValueError(f"fp16: value exceeds the float16 range (|x| > {FP16_MAX})")
        out = v.to(self.dtype, copy=True)  # never alias the caller's tensor (fp32 would otherwise)
        if not all_finite(out):
            raise ValueError(f"{self.name}: value overflows {self.dtype}")
        return {"v": out}

    def decode(self, parts: dict[str, torch.Tensor], n: int, default_block: int) -> torch.Tensor:
        return parts["v"].to(torch.float32, copy=True)


class QuantValues(ValueCodec):
    """Blockwise asymmetric quantization to `bits` (2, 4 or 8) with float16 scale and offset per block."""

    rejects_nonfinite = True  # a NaN/Inf makes its block's offset or scale non-finite, which raises

    def __init__(self, bits: int, block: int | None = None, stochastic: bool = False, seed: int = 0) -> None:
        if bits not in (2, 4, 8):
            raise ValueError(f"quantization bits must be 2, 4 or 8, got {bits}")
        self.bits, self.block, self.stochastic, self.seed = bits, block, stochastic, seed
        self.levels = (1 << bits) - 1
        self._gen: torch.Generator | None = None

    @property
    def spec(self) -> str:
        s = "int8" if self.bits == 8 else f"q{self.bits}"
        if self.block is not None:
            s += f":b{self.block}"
        if self.stochastic:
            s += f":sr{self.seed}" if self.seed else ":sr"
        return s

    def _block(self, default_block: int) -> int:
        return self.block or default_block

    def layout(self, n: int, default_block: int) -> list[PartSpec]:
        nb = _nblocks(n, self._block(default_block))
        return [
            PartSpec("q", torch.uint8, packed_len(n, self.bits)),
            PartSpec("scale", torch.float16, nb),
            PartSpec("offset", torch.float16, nb),
        ]

    def _generator(self, device: torch.device) -> torch.Generator:
        """The stochastic-rounding generator: seeded once per device, then continued across calls."""
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device)
            self._gen.manual_seed(self.seed)
        return self._gen

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(like.shape, generator=self._generator(like.device), device=like.device, dtype=like.dtype)

    def encode(self, v: torch.Tensor, default_block: int) -> dict[str, torch.Tensor]:
        block = self._block(default_block)
        # Contiguous float32 on CPU: the cache-blocked kernels; anything else (GPU...): the whole-tensor code.
        if v.device.type == "cpu" and v.dtype == torch.float32 and v.is_contiguous() and v.numel():
            gen = self._generator(v.device) if self.stochastic else None
            try:
                q, scale, offset = quantize_blocked(v.detach().reshape(-1), block, self.bits, gen)
            except NonFiniteBlock:  # a float16-range error: the reference code raises it with its message
                return self._encode_reference(v, block)
            return {"q": q, "scale": scale, "offset": offset}
        return self._encode_reference(v, block)

    def _encode_reference(self, v: torch.Tensor, block: int) -> dict[str, torch.Tensor]:
        """Whole-tensor version (any device); the blocked CPU path must match it bit for bit."""
        n = v.numel()
        if n == 0:
            return {"q": v.new_zeros(0, dtype=torch.uint8), "scale": v.new_zeros(0, dtype=torch.float16),
                    "offset": v.new_zeros(0, dtype=torch.float16)}
        x = _pad_blocks(v, block)
        # amin/amax rather than aminmax: the fused op is several times slower on CPU here.
        mn, mx = x.amin(dim=1), x.amax(dim=1)
        off16 = fp16_round_down(mn, f"{self.spec}: block minimum")
        off = off16.float()
        sc16 = fp16_round_up((mx - off) / self.levels, f"{self.spec}: block scale")
        sc = sc16.float()
        # A zero scale means the block is constant and exactly equal to its (float16) offset.
        y = torch.where(sc[:, None] > 0, (x - off[:, None]) / sc[:, None].clamp_min(1e-30), 0.0)
        q = torch.floor(y + self._noise(y)) if self.stochastic else torch.round(y)
        q = q.clamp_(0, self.levels).reshape(-1)[:n]
        return {"q": pack_bits(q.to(torch.uint8), self.bits), "scale": sc16, "offset": off16}

    def decode(self, parts: dict[str, torch.Tensor], n: int, default_block: int) -> torch.Tensor:
        block = self._block(default_block)
        if n and all(p.device.type == "cpu" for p in parts.values()):  # as in encode
            return dequantize_blocked(parts["q"], parts["scale"], parts["offset"], n, block, self.bits)
        return self._decode_reference(parts, n, block)

    def _decode_reference(self, parts: dict[str, torch.Tensor], n: int, block: int) -> torch.Tensor:
        """Whole-tensor version (any device); the blocked CPU path must match it bit for bit."""
        if n == 0:
            return torch.zeros(0, device=parts["q"].device)
        nb = parts["scale"].numel()
        codes = unpack_codes_u8(parts["q"], self.bits, n)[:n]
        if codes.numel() < nb * block:
            codes = torch.cat([codes, codes.new_zeros(nb * block - codes.numel())])
        q = codes.view(nb, block).to(torch.float32)
        out = torch.addcmul(parts["offset"].float()[:, None], q, parts["scale"].float()[:, None])
        return out.reshape(-1)[:n]

    def decodes_finite(self, parts: dict[str, torch.Tensor]) -> bool:
        # |offset + code * scale| <= 65504 * 256 for finite float16 offsets and scales: no float32 overflow.
        return all_finite(parts["scale"]) and all_finite(parts["offset"])

    def check(self, parts: dict[str, torch.Tensor], n: int, default_block: int) -> None:
        # min < 0 rather than (scale < 0).any(): one reduction instead of a slow float16 compare; -0.0 passes
        # either way, and NaN (which both would let through) was rejected as non-finite before this.
        if parts["scale"].numel() and bool(parts["scale"].amin() < 0):
            raise ValueError(f"{self.spec}: negative scale")
        check_packed(parts["q"], self.bits, n)


class SignValues(ValueCodec):
    """1 bit per value (1 = negative) and one float16 scale (mean |v|) per block; decode sign * scale."""

    def __init__(self, block: int | None = None, per_tensor: bool = False) -> None:
        self.block, self.per_tensor = block, per_tensor

    @property
    def spec(self) -> str:
        if self.per_tensor:
            return "sign:t"
        return f"sign:b{self.block}" if self.block is not None else "sign"

    def _block(self, n: int, default_block: int) -> int:
        if self.per_tensor:
            return max(n, 1)
        return self.block or default_block

    def layout(self, n: int, default_block: int) -> list[PartSpec]:
        return [PartSpec("sign", torch.uint8, packed_len(n, 1)),
                PartSpec("scale", torch.float16, _nblocks(n, self._block(n, default_block)))]

    def encode(self, v: torch.Tensor, default_block: int) -> dict[str, torch.Tensor]:
        n = v.numel()
        block = self._block(n, default_block)
        a = _pad_blocks(v.abs(), block, fill=0.0) if n else v.new_zeros(0, block)
        counts = torch.full((a.shape[0],), float(block), device=v.device)
        if n % block:
            counts[-1] = n % block
        scale = (a.sum(dim=1) / counts).to(torch.float16)
        if not all_finite(scale):
            raise ValueError(f"{self.spec}: mean magnitude exceeds the float16 range")
        return {"sign": pack_bits(v < 0, 1), "scale": scale}

    def decode(self, parts: dict[str, torch.Tensor], n: int, default_block: int) -> torch.Tensor:
        block = self._block(n, default_block)
        nb = parts["scale"].numel()
        neg = unpack_codes_u8(parts["sign"], 1, n)[:n]
        if neg.numel() < nb * block:
            neg = torch.cat([neg, neg.new_zeros(nb * block - neg.numel())])
        signs = 1.0 - 2.0 * neg.view(nb, block).to(torch.float32)
        return (signs * parts["scale"].float()[:, None]).reshape(-1)[:n]

    def check(self, parts: dict[str, torch.Tensor], n: int, default_block: int) -> None:
        if (parts["scale"] < 0).any():
            raise ValueError(f"{self.spec}: negative scale")
        check_packed(parts["sign"], 1, n)
