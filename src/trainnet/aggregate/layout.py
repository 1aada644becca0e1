"""The flat parameter layout every plane agrees on: tensors in template order, concatenated.

    layout = ParamLayout.of(template)                    # {name: tensor} in the model's named_parameters order
    for name, t_lo, t_hi, f_lo in layout.pieces(lo, hi): ...   # which tensor elements make up flat [lo, hi)
    params = layout.unflatten(flat); flat = layout.flatten(params)
    chunks(lo, hi, c)                                     # the global grid of processing chunks inside [lo, hi)

Shards own contiguous block-aligned ranges of the flat vector (core.shard_ranges); a chunk grid anchored at 0
means 1 shard and N shards run exactly the same arithmetic on exactly the same chunks.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch

ParamDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ParamLayout:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # flat offset of each tensor
    numel: int

    @classmethod
    def of(cls, template: ParamDict) -> ParamLayout:
        return cls.from_shapes([(k, tuple(v.shape)) for k, v in template.items()])

    @classmethod
    def from_shapes(cls, items: list[tuple[str, tuple[int, ...]]]) -> ParamLayout:
        offsets, pos = [], 0
        for _, shape in items:
            offsets.append(pos)
            pos += math.prod(shape)
        return cls(tuple(n for n, _ in items), tuple(tuple(s) for _, s in items), tuple(offsets), pos)

    def size(self, i: int) -> int:
        return math.prod(self.shapes[i])

    def pieces(self, lo: int, hi: int) -> list[tuple[str, int, int, int]]:
        """(tensor name, element lo, element hi, flat lo) of every tensor overlapping flat [lo, hi)."""
        out = []
        i = max(0, bisect.bisect_right(self.offsets, lo) - 1)
        while i < len(self.names) and self.offsets[i] < hi:
            start, n = self.offsets[i], self.size(i)
            a, b = max(lo, start), min(hi, start + n)
            if a < b:
                out.append((self.names[i], a - start, b - start, a))
            i += 1
        return out

    def flatten(self, params: ParamDict) -> torch.Tensor:
        return torch.cat([params[k].detach().reshape(-1).float() for k in self.names]) if self.names \
            else torch.zeros(0)

    def unflatten(self, flat: torch.Tensor) -> ParamDict:
        if flat.numel() != self.numel:
            raise ValueError(f"flat vector has {flat.numel()} elements, the layout {self.numel}")
        return {k: flat[o:o + math.prod(s)].view(s) for k, s, o in zip(self.names, self.shapes, self.offsets,
                                                                         strict=True)}

    def to_doc(self) -> list[list]:
        return [[n, list(s)] for n, s in zip(self.names, self.shapes, strict=True)]


def chunks(lo: int, hi: int, c: int) -> list[tuple[int, int]]:
    """Chunks of the global grid (multiples of c) that cover [lo, hi)."""
    out, a = [], lo
    while a < hi:
        b = min(hi, (a // c + 1) * c)
        out.append((a, b))
        a = b
    return out


def chunk_size(n_rows: int, block: int, budget_elems: int = 1 << 24, floor: int = 1 << 12) -> int:
    """Columns per processing chunk for n_rows updates: about budget_elems in all, a power of two dividing
    `block`, at least `floor` (O(n x chunk) memory)."""
    c = max(floor, budget_elems // max(1, n_rows))
    c = 1 << (c.bit_length() - 1)
    return max(1, min(c, block))
