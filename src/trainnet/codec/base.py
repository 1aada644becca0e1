"""Codec interface and the encoded form of one tensor.

    codec = parse_codec("topk:0.015+q2")
    enc = codec.encode(t)            # EncodedTensor: spec, shape, dtype, parts (1-D tensors)
    approx = codec.decode(enc)       # float32, original shape

Every part's name, dtype and length is a pure function of (codec spec, numel): `codec.layout(numel)`.
That lets the wire decoder check all byte lengths before it allocates anything.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from trainnet.codec.bits import all_finite

# Part dtypes a codec may emit, by wire name. The wire decoder accepts nothing else.
PART_DTYPES: dict[str, torch.dtype] = {
    "uint8": torch.uint8,
    "int16": torch.int16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in PART_DTYPES.items()}


@dataclass(frozen=True)
class PartSpec:
    """Expected part of an encoded tensor: name, dtype and number of elements."""

    name: str
    dtype: torch.dtype
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass
class EncodedTensor:
    """A tensor in packed form: `parts` are 1-D tensors named as in `Codec.layout(numel)`."""

    spec: str
    shape: tuple[int, ...]
    parts: dict[str, torch.Tensor]
    dtype: str = "float32"  # dtype of the original tensor (informational)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parts.values())


class Codec(ABC):
    """Encode a float tensor into small packed parts and back. Subclasses are built by `parse_codec`."""

    spec: str
    lossless: bool = False

    @abstractmethod
    def layout(self, numel: int) -> list[PartSpec]:
        """Parts (in wire order) that encoding a tensor of `numel` elements produces."""

    @abstractmethod
    def _encode_flat(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode a flat, finite float32 tensor."""

    @abstractmethod
    def _decode_flat(self, parts: dict[str, torch.Tensor], numel: int) -> torch.Tensor:
        """Decode validated parts into a flat float32 tensor of `numel` elements."""

    # True when _encode_flat itself raises ValueError on any NaN/Inf input (encode then skips its own check).
    encode_rejects_nonfinite: bool = False

    def _check_parts(self, parts: dict[str, torch.Tensor], numel: int) -> None:
        """Content checks beyond layout (index ranges...). Raise ValueError."""
        return None

    def _decodes_finite(self, parts: dict[str, torch.Tensor]) -> bool:
        """True when these parts cannot decode to NaN/Inf (decode then skips its pass over the output)."""
        return False

    def encode(self, t: torch.Tensor) -> EncodedTensor:
        """Encode `t` (any float dtype/shape). Raises ValueError on NaN/Inf or values the codec can't hold."""
        if not torch.is_floating_point(t):
            raise ValueError(f"codec {self.spec!r} encodes float tensors, got {t.dtype}")
        x = t.detach().reshape(-1).to(torch.float32)
        if self.encode_rejects_nonfinite:
            # The encoder fails on any NaN/Inf by itself, so the full pass over x is only made to name the error.
            try:
                parts = self._encode_flat(x)
            except ValueError:
                if not all_finite(x):
                    raise ValueError(f"codec {self.spec!r}: tensor contains NaN or Inf") from None
                raise
        else:
            if not all_finite(x):
                raise ValueError(f"codec {self.spec!r}: tensor contains NaN or Inf")
            parts = self._encode_flat(x)
        dtype = str(t.dtype).removeprefix("torch.")
        return EncodedTensor(self.spec, tuple(t.shape), parts, dtype)

    def validate(self, enc: EncodedTensor) -> None:
        """Check that `enc` has exactly this codec's layout and sane content. Raises ValueError."""
        numel = enc.numel
        expected = self.layout(numel)
        if list(enc.parts) != [p.name for p in expected]:
            raise ValueError(f"codec {self.spec!r}: parts {list(enc.parts)}, expected {[p.name for p in expected]}")
        for p in expected:
            got = enc.parts[p.name]
            if got.dtype != p.dtype or got.dim() != 1 or got.numel() != p.numel:
                raise ValueError(
                    f"codec {self.spec!r}: part {p.name!r} is {got.dtype}[{got.numel()}], "
                    f"expected {p.dtype}[{p.numel}]"
                )
            if got.is_floating_point() and not all_finite(got):
                raise ValueError(f"codec {self.spec!r}: part {p.name!r} contains NaN or Inf")
        self._check_parts(enc.parts, numel)

    def decode(self, enc: EncodedTensor, *, validate: bool = True) -> torch.Tensor:
        """Decode into a float32 tensor of the original shape (on the parts' device)."""
        if validate:
            self.validate(enc)
        out = self._decode_flat(enc.parts, enc.numel).reshape(enc.shape)
        if not self._decodes_finite(enc.parts) and not all_finite(out):
            raise ValueError(f"codec {self.spec!r}: decoded tensor contains NaN or Inf")
        return out

    def payload_bytes(self, numel: int) -> int:
        """Bytes of packed parts for a tensor of `numel` elements (wire header not included)."""
        return sum(p.nbytes for p in self.layout(numel))

    def bits_per_param(self, numel: int) -> float:
        """Packed bits per parameter for one tensor of `numel` elements (wire header not included)."""
        return 8 * self.payload_bytes(numel) / max(numel, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"
