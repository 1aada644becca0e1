"""Coordinate-wise robust rules: weighted median and weighted trimmed mean, chunked over d.

Use: ``CoordinateMedian()(updates, weights)`` or ``TrimmedMean(beta=0.2)(updates, weights)``, with
``updates`` [n, d] and ``weights`` [n] (non-negative; normalised here). Both cost O(n·log n·d) time
(a sort of n values per coordinate) and O(n·chunk) extra memory, so they scale to d = 10^8.

Each coordinate is treated independently: the result is robust per coordinate (Yin et al. 2018,
arXiv:1803.01498), but an attacker can still shift every coordinate a little inside the honest
spread (ALIE, arXiv:1902.06156), which is why a norm bound in front (``with_norm_clip``) helps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .robust_common import DEFAULT_CHUNK_ELEMS, check_inputs, column_chunks, is_uniform, scaled_block

# Cumulative weights are compared with 1/2 with this slack, so equal weights and even n give the
# usual midpoint median (as numpy.median) despite floating point rounding.
_HALF_EPS = 1e-9


def median_block(block: torch.Tensor, w: torch.Tensor, uniform: bool) -> torch.Tensor:
    """Weighted coordinate-wise median of ``block`` [n, c] with float64 weights ``w`` [n] → [c].

    The weighted median is the value where the cumulative weight (in sorted order) crosses 1/2;
    when it lands exactly on 1/2 the two neighbouring values are averaged (numpy's convention for
    equal weights and even n). Zero-weight updates never decide the result.
    """
    n = block.shape[0]
    if uniform:
        vals = block.sort(dim=0).values
        if n % 2:
            return vals[n // 2]
        return 0.5 * (vals[n // 2 - 1] + vals[n // 2])
    vals, idx = block.sort(dim=0)
    cw = w[idx].cumsum(dim=0)
    lo = (cw < 0.5 - _HALF_EPS).sum(dim=0, keepdim=True).clamp_(max=n - 1)
    hi = (cw <= 0.5 + _HALF_EPS).sum(dim=0, keepdim=True).clamp_(max=n - 1)
    return (0.5 * (vals.gather(0, lo) + vals.gather(0, hi))).squeeze(0)


def trimmed_block(block: torch.Tensor, w: torch.Tensor, uniform: bool, k: int) -> torch.Tensor:
    """Drop the k smallest and k largest values of each column of ``block`` [n, c]; weighted mean of the rest.

    The survivors keep their own weights (renormalised per coordinate); a column whose survivors
    all have zero weight falls back to their plain mean.
    """
    n = block.shape[0]
    if uniform:
        vals = block.sort(dim=0).values
        return vals[k:n - k].mean(dim=0)
    vals, idx = block.sort(dim=0)
    wk = w[idx[k:n - k]].to(block.dtype)
    kept = vals[k:n - k]
    num = (kept * wk).sum(dim=0)
    den = wk.sum(dim=0)
    return torch.where(den > 0, num / den.clamp_min(1e-30), kept.mean(dim=0))


@dataclass(frozen=True)
class CoordinateMedian:
    """Coordinate-wise weighted median. Use: ``CoordinateMedian()(updates, weights)`` → [d] float32.

    Cost O(n·log n·d) time, O(n·chunk) memory. Tolerates f < n/2 attackers (breakdown point 1/2;
    with weights: attackers holding < 1/2 of the total weight). Yin et al. 2018, arXiv:1803.01498.
    """

    chunk_elems: int = DEFAULT_CHUNK_ELEMS
    supports_row_scale = True

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 row_scale: torch.Tensor | None = None, **_ctx: object) -> torch.Tensor:
        updates, w = check_inputs(updates, weights)
        n, d = updates.shape
        uniform = is_uniform(w)
        out = torch.empty(d, dtype=torch.float32, device=updates.device)
        for sl in column_chunks(n, d, self.chunk_elems):
            out[sl] = median_block(scaled_block(updates, sl, row_scale), w, uniform)
        return out


@dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise trimmed mean: per coordinate drop k = floor(beta·n) values at each end, average the rest.

    Use: ``TrimmedMean(beta=0.2)(updates, weights)`` → [d] float32. Requires n − 2k ≥ 1.
    Cost O(n·log n·d) time, O(n·chunk) memory. Tolerates f ≤ k = floor(beta·n) attackers
    (beta < 1/2). Yin et al. 2018, arXiv:1803.01498. Trimming is by count (attackers are nodes),
    survivors are weighted by their own weights.
    """

    beta: float = 0.1
    chunk_elems: int = DEFAULT_CHUNK_ELEMS
    supports_row_scale = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 0.5:
            raise ValueError(f"trimmed_mean beta must be in [0, 0.5), got {self.beta}")

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 row_scale: torch.Tensor | None = None, **_ctx: object) -> torch.Tensor:
        updates, w = check_inputs(updates, weights)
        n, d = updates.shape
        k = int(self.beta * n)
        if n - 2 * k < 1:
            raise ValueError(f"trimmed_mean(beta={self.beta}) trims {2 * k} of n={n} updates; nothing left")
        uniform = is_uniform(w)
        out = torch.empty(d, dtype=torch.float32, device=updates.device)
        for sl in column_chunks(n, d, self.chunk_elems):
            out[sl] = trimmed_block(scaled_block(updates, sl, row_scale), w, uniform, k)
        return out
