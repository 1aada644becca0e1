"""Distance-based rules for small n: (multi-)Krum and Bulyan. Both cost O(n²·d) for pairwise distances.

Use: ``MultiKrum(f=2, m=4)(updates, weights)``, ``MultiKrum(f=2, m=1)`` is Krum,
``Bulyan(f=1)(updates, weights)``. ``f`` is the number of attackers assumed; ``f=None`` assumes the
largest f the rule tolerates for the n it is given. Selection is by count (attackers are nodes);
weights only enter the final average of the selected updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .robust_common import (
    DEFAULT_CHUNK_ELEMS,
    check_inputs,
    column_chunks,
    combine_rows,
    scaled_block,
)


def pairwise_sq_dists(updates: torch.Tensor, row_scale: torch.Tensor | None = None,
                      chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> torch.Tensor:
    """Squared Euclidean distances between all (scaled) rows, float64 [n, n], via a chunked float64 Gram."""
    n, d = updates.shape
    gram = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
    for sl in column_chunks(n, d, chunk_elems):
        block = scaled_block(updates, sl, row_scale, torch.float64)
        gram += block @ block.T
    sq = gram.diagonal()
    return (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * gram).clamp_min_(0.0).fill_diagonal_(0.0)


def krum_scores(dists: torch.Tensor, idx: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score of each candidate in ``idx``: sum of squared distances to its n'−f−2 nearest others.

    n' = len(idx); the neighbour count is clamped to [1, n'−1] so the iterated selection of Bulyan
    can run down to small candidate sets (the original paper leaves that edge unspecified).
    """
    sub = dists[idx][:, idx]
    k = min(max(1, len(idx) - f - 2), len(idx) - 1)
    if k <= 0:
        return torch.zeros(len(idx), dtype=dists.dtype, device=dists.device)
    # Exclude self-distance (0) by adding +inf on the diagonal before taking the k smallest.
    sub = sub + torch.diag(torch.full((len(idx),), float("inf"), dtype=dists.dtype, device=dists.device))
    return sub.topk(k, dim=1, largest=False).values.sum(dim=1)


def _resolve_f(f: int | None, n: int, name: str, need: str, ok) -> int:
    if f is None:
        # Auto: the largest f the bound allows; 0 when n is too small for any (a grace-window merge of
        # one or two updates), where the rule degrades to a plain (weighted) average of what it has.
        f = 0
        while ok(n, f + 1):
            f += 1
        return f
    if f < 0:
        raise ValueError(f"{name}: f must be >= 0, got {f}")
    if not ok(n, f):
        raise ValueError(f"{name} with f={f} needs {need}, got n={n}")
    return f


@dataclass(frozen=True)
class MultiKrum:
    """Multi-Krum (Blanchard et al., NeurIPS 2017): average the m updates with the lowest Krum scores.

    Use: ``MultiKrum(f=2, m=4)(updates, weights)``; m=1 is Krum, m=None means m = n − f. Requires
    n > 2f + 2 (raises ValueError otherwise); tolerates f attackers under that bound. Cost O(n²·d)
    for the pairwise distances plus O(n²·log n); memory O(n² + n·chunk).
    """

    f: int | None = None
    m: int | None = None
    chunk_elems: int = DEFAULT_CHUNK_ELEMS
    supports_row_scale = True

    def select(self, updates: torch.Tensor, row_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Indices of the selected updates (lowest scores first; ties → lower index)."""
        n = updates.shape[0]
        f = _resolve_f(self.f, n, "multikrum", "n > 2f + 2", lambda n_, f_: n_ > 2 * f_ + 2)
        m = n - f if self.m is None else self.m
        if not 1 <= m <= n:
            raise ValueError(f"multikrum m must be in [1, n={n}], got {m}")
        dists = pairwise_sq_dists(updates, row_scale, self.chunk_elems)
        scores = krum_scores(dists, torch.arange(n, device=updates.device), f)
        return torch.sort(scores, stable=True).indices[:m]

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 row_scale: torch.Tensor | None = None, **_ctx: object) -> torch.Tensor:
        updates, w = check_inputs(updates, weights)
        chosen = self.select(updates, row_scale)
        return combine_rows(updates, _renormalised(w, chosen), row_scale, self.chunk_elems)


def _renormalised(w: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Weights restricted to ``chosen`` and renormalised (uniform over them if they all weigh zero)."""
    coeff = torch.zeros_like(w)
    total = w[chosen].sum()
    coeff[chosen] = w[chosen] / total if total > 0 else 1.0 / len(chosen)
    return coeff


@dataclass(frozen=True)
class Bulyan:
    """Bulyan (El Mhamdi, Guerraoui & Rouault, ICML 2018, arXiv:1802.07927) over Krum.

    Use: ``Bulyan(f=1)(updates, weights)``. Picks θ = n − 2f updates by repeatedly taking the Krum
    winner out of the remaining set, then per coordinate averages the β = θ − 2f selected values
    closest to their median. Requires n ≥ 4f + 3 (raises ValueError otherwise); tolerates f
    attackers under that bound. Cost O(n²·d + θ·log θ·d).
    """

    f: int | None = None
    chunk_elems: int = DEFAULT_CHUNK_ELEMS
    supports_row_scale = True

    def select(self, updates: torch.Tensor, row_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Return (indices of the θ selected updates in selection order, f used)."""
        n = updates.shape[0]
        f = _resolve_f(self.f, n, "bulyan", "n >= 4f + 3", lambda n_, f_: n_ >= 4 * f_ + 3)
        dists = pairwise_sq_dists(updates, row_scale, self.chunk_elems)
        remaining = list(range(n))
        chosen: list[int] = []
        for _ in range(n - 2 * f):
            idx = torch.tensor(remaining, device=updates.device)
            scores = krum_scores(dists, idx, f)
            best = remaining[int(torch.sort(scores, stable=True).indices[0])]
            chosen.append(best)
            remaining.remove(best)
        return torch.tensor(chosen, device=updates.device), f

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 row_scale: torch.Tensor | None = None, **_ctx: object) -> torch.Tensor:
        updates, w = check_inputs(updates, weights)
        chosen, f = self.select(updates, row_scale)
        theta = len(chosen)
        beta = theta - 2 * f
        ws = w[chosen]
        if ws.sum() <= 0:
            ws = torch.ones_like(ws)
        d = updates.shape[1]
        out = torch.empty(d, dtype=torch.float32, device=updates.device)
        for sl in column_chunks(updates.shape[0], d, self.chunk_elems):
            # Index rows inside the chunk so no θ×d copy of the selected updates is made.
            block = scaled_block(updates, sl, row_scale)[chosen]
            vals = block.sort(dim=0).values
            med = vals[theta // 2] if theta % 2 else 0.5 * (vals[theta // 2 - 1] + vals[theta // 2])
            near = (block - med).abs().topk(beta, dim=0, largest=False).indices
            wk = ws.to(torch.float32)[near]
            den = wk.sum(dim=0)
            num = (block.gather(0, near) * wk).sum(dim=0)
            out[sl] = torch.where(den > 0, num / den.clamp_min(1e-30), block.gather(0, near).mean(dim=0))
        return out
