"""Shared helpers for the robust aggregation rules: input checks, column chunking, row norms.

Use: every rule calls ``check_inputs(updates, weights)`` first, then walks the coordinates with
``for sl in column_chunks(n, d, chunk_elems): block = scaled_block(updates, sl, row_scale)``.
Chunking bounds every n×chunk temporary (sort values, sort indices, float64 copies) by
``chunk_elems`` elements, so a rule runs on d = 10^8 with memory ~ the input plus a few chunks.

``row_scale`` (a [n] float tensor or None) lets a norm-clipping wrapper scale update rows lazily,
chunk by chunk, instead of materialising a clipped n×d copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

Aggregator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# 2^22 = 4M elements per chunk: a float32 [n, c] block is 16 MiB and its int64 sort indices 32 MiB,
# large enough that the per-chunk Python overhead is negligible, small enough for a laptop.
DEFAULT_CHUNK_ELEMS = 1 << 22


def check_inputs(updates: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``updates`` [n, d] and ``weights`` [n]; return (updates, weights normalised to sum 1).

    Weights are returned as float64 on the updates' device. ``weights=None`` means uniform.
    Raises ValueError on wrong shapes, non-finite or negative weights, or an all-zero weight vector.
    """
    if updates.dim() != 2:
        raise ValueError(f"updates must be [n, d], got shape {tuple(updates.shape)}")
    n = updates.shape[0]
    if n == 0:
        raise ValueError("cannot aggregate zero updates")
    if not updates.is_floating_point():
        raise ValueError(f"updates must be floating point, got {updates.dtype}")
    bad = nonfinite_rows(updates)
    if bad.any():
        # NaN/inf would pass through clipping and distances; the caller must drop these updates (and
        # treat them as evidence) before aggregating, ideally when the update is received.
        raise ValueError(f"updates rows {bad.nonzero().flatten().tolist()} contain NaN or inf")
    if weights is None:
        return updates, torch.full((n,), 1.0 / n, dtype=torch.float64, device=updates.device)
    if weights.dim() != 1 or weights.shape[0] != n:
        raise ValueError(f"weights must be [{n}], got shape {tuple(weights.shape)}")
    w = weights.to(device=updates.device, dtype=torch.float64)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    total = w.sum()
    if total <= 0:
        raise ValueError("weights must not all be zero")
    return updates, w / total


def nonfinite_rows(updates: torch.Tensor, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> torch.Tensor:
    """Bool [n]: which rows of ``updates`` [n, d] contain a NaN or ±inf (checked chunk by chunk)."""
    n, d = updates.shape
    bad = torch.zeros(n, dtype=torch.bool, device=updates.device)
    for sl in column_chunks(n, d, chunk_elems):
        bad |= ~torch.isfinite(updates[:, sl]).all(dim=1)
    return bad


def is_uniform(w: torch.Tensor) -> bool:
    """True when all weights are equal (to 1e-9 relative), enabling the faster unweighted paths."""
    return bool((w.max() - w.min()) <= 1e-9 * w.max())


def column_chunks(n: int, d: int, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> Iterator[slice]:
    """Yield column slices covering [0, d) such that n × (slice width) <= chunk_elems (at least 1 column)."""
    width = max(1, chunk_elems // max(1, n))
    for start in range(0, d, width):
        yield slice(start, min(d, start + width))


def scaled_block(updates: torch.Tensor, sl: slice, row_scale: torch.Tensor | None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return ``updates[:, sl]`` (as ``dtype``) with row i multiplied by ``row_scale[i]`` if given."""
    block = updates[:, sl].to(dtype)
    if row_scale is not None:
        block = block * row_scale.to(dtype).unsqueeze(1)
    return block


def row_norms(updates: torch.Tensor, row_scale: torch.Tensor | None = None,
              chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> torch.Tensor:
    """L2 norm of each (scaled) row, float64 [n], accumulated chunk by chunk in float64."""
    n, d = updates.shape
    sq = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for sl in column_chunks(n, d, chunk_elems):
        block = updates[:, sl].to(torch.float32)
        sq += (block * block).sum(dim=1, dtype=torch.float64)
    norms = sq.sqrt()
    if row_scale is not None:
        norms = norms * row_scale.to(torch.float64).abs()
    return norms


def distances_to(updates: torch.Tensor, center: torch.Tensor, row_scale: torch.Tensor | None = None,
                 chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> torch.Tensor:
    """||x_i − center|| for each (scaled) row, float64 [n], computed by direct differences per chunk.

    Direct differences (rather than ||x||² − 2x·c + ||c||²) avoid cancellation when x_i ≈ center.
    """
    n, d = updates.shape
    sq = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for sl in column_chunks(n, d, chunk_elems):
        diff = scaled_block(updates, sl, row_scale) - center[sl].to(torch.float32)
        sq += (diff * diff).sum(dim=1, dtype=torch.float64)
    return sq.sqrt()


def combine_rows(updates: torch.Tensor, coeffs: torch.Tensor, row_scale: torch.Tensor | None = None,
                 chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> torch.Tensor:
    """Σ_i coeffs_i · scale_i · x_i as float32 [d], without an n×d temporary.

    Each output coordinate sums only n terms, so float32 accumulation is accurate enough.
    """
    n, d = updates.shape
    c = coeffs.to(torch.float64)
    if row_scale is not None:
        c = c * row_scale.to(torch.float64)
    c32 = c.to(torch.float32)
    out = torch.empty(d, dtype=torch.float32, device=updates.device)
    for sl in column_chunks(n, d, chunk_elems):
        out[sl] = c32 @ updates[:, sl].to(torch.float32)
    return out


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                  row_scale: torch.Tensor | None = None,
                  chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> torch.Tensor:
    """Plain weighted mean Σ w_i x_i (not robust: one unbounded update moves it arbitrarily). O(n·d)."""
    updates, w = check_inputs(updates, weights)
    return combine_rows(updates, w, row_scale, chunk_elems)
