"""Norm-based robust rules: centered clipping (+ bucketing), geometric median, norm-clipping wrapper.

Use:
    CenteredClip(tau=None, iters=3, buckets=2)(updates, weights, center=prev_aggregate)
    GeometricMedian()(updates, weights)
    with_norm_clip(TrimmedMean(0.2), multiplier=2.0)(updates, weights)
    with_bucketing(CoordinateMedian(), s=2)(updates, weights, seed=round_number)

All of them work on whole rows through chunked reductions (row norms, distances, Σ c_i x_i), so
besides the input they hold O(d) vectors plus one n×chunk block; bucketing alone materialises the
n/s bucket means (n/s × d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .robust_common import (
    DEFAULT_CHUNK_ELEMS,
    Aggregator,
    check_inputs,
    combine_rows,
    distances_to,
    row_norms,
)
from .robust_coord import CoordinateMedian, median_block


def bucketize(updates: torch.Tensor, w: torch.Tensor, s: int, seed: int,
              row_scale: torch.Tensor | None = None,
              chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """s-bucketing (Karimireddy, He & Jaggi, arXiv:2006.09365): shuffle, group by s, average each group.

    Returns (bucket means [ceil(n/s), d] float32, bucket weights [ceil(n/s)] float64 = Σ of members'
    weights). The permutation comes from ``torch.Generator().manual_seed(seed)``, so it is
    deterministic given the seed; vary the seed per round so attackers cannot plan their buckets.
    """
    n, d = updates.shape
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen).to(updates.device)
    groups = [perm[i:i + s] for i in range(0, n, s)]
    means = torch.empty(len(groups), d, dtype=torch.float32, device=updates.device)
    bw = torch.empty(len(groups), dtype=torch.float64, device=updates.device)
    for j, g in enumerate(groups):
        gw = w[g]
        total = gw.sum()
        # A bucket of zero-weight updates is averaged plainly but carries no weight.
        coeff = torch.zeros(n, dtype=torch.float64, device=updates.device)
        coeff[g] = gw / total if total > 0 else torch.full_like(gw, 1.0 / len(g))
        means[j] = combine_rows(updates, coeff, row_scale, chunk_elems)
        bw[j] = total
    return means, bw


@dataclass(frozen=True)
class Bucketed:
    """Apply ``rule`` to the means of random buckets of size ``s`` (see ``bucketize``).

    Use: ``Bucketed(CoordinateMedian(), s=2)(updates, weights, seed=round)``. Cost O(n·d) on top of
    the inner rule, which then sees n/s inputs. With bucket size s, a fraction δ of attackers
    corrupts at most s·δ of the buckets, so the inner rule must tolerate s·δ (arXiv:2006.09365).
    """

    rule: Aggregator
    s: int = 2
    seed: int = 0
    chunk_elems: int = DEFAULT_CHUNK_ELEMS
    supports_row_scale = True

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 row_scale: torch.Tensor | None = None, seed: int | None = None,
                 **ctx: object) -> torch.Tensor:
        updates, w = check_inputs(updates, weights)
        if self.s < 1:
            raise ValueError(f"bucket size must be >= 1, got {self.s}")
        if self.s == 1 and row_scale is None:
            return _call(self.rule, updates, w, ctx)
        means, bw = bucketize(updates, w, self.s, self.seed if seed is None else seed, row_scale,
                              self.chunk_elems)
        return _call(self.rule, means, bw, ctx)


def _call(rule: Aggregator, updates: torch.Tensor, w: torch.Tensor, ctx: dict) -> torch.Tensor:
    """Call ``rule``, passing context keywords (center, seed, ...) only to rules of this module family."""
    if getattr(rule, "supports_row_scale", False):
        return rule(updates, w, **ctx)
    return rule(updates, w.to(torch.float32))


@dataclass(frozen=True)
class CenteredClip:
    """Centered clipping (Karimireddy, He & Jaggi 2021, arXiv:2012.10333) with optional s-bucketing.

    Use: ``CenteredClip(tau=1.0, iters=3, buckets=2)(updates, weights, center=prev_aggregate)``.
    Iterates v ← v + Σ_i w_i (x_i − v)·min(1, tau/||x_i − v||) starting from ``center`` (the previous
    round's aggregate) if given, else the coordinate-wise median. ``tau=None`` picks tau as the
    median distance of the inputs to the starting center (scale-free). ``buckets`` is the bucket
    size s (1 = no bucketing; 2 is the paper's advice for non-IID data, arXiv:2006.09365).
    Cost O(iters·n·d) (+ O(n·log n·d) for the median start). Each attacker moves v by at most
    w_i·tau per iteration, whatever it sends; the paper proves robustness for a Byzantine fraction δ
    below a constant (< 1/2; see its analysis for the exact value). With bucket size s the inner
    guarantee must hold for s·δ.
    """

    tau: float | None = None
    iters: int = 3
    buckets: int = 1
    seed: int = 0
    chunk_elems: int = DEFAULT_CHUNK_ELEMS
    supports_row_scale = True

    def __post_init__(self) -> None:
        if self.tau is not None and self.tau <= 0:
            raise ValueError(f"cclip tau must be > 0, got {self.tau}")
        if self.iters < 1 or self.buckets < 1:
            raise ValueError("cclip needs iters >= 1 and buckets >= 1")

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 center: torch.Tensor | None = None, row_scale: torch.Tensor | None = None,
                 seed: int | None = None, **_ctx: object) -> torch.Tensor:
        updates, w = check_inputs(updates, weights)
        if self.buckets > 1:
            updates, w = bucketize(updates, w, self.buckets, self.seed if seed is None else seed,
                                   row_scale, self.chunk_elems)
            row_scale = None
        d = updates.shape[1]
        if center is not None:
            if center.shape != (d,):
                raise ValueError(f"center must be [{d}], got {tuple(center.shape)}")
            v = center.to(device=updates.device, dtype=torch.float32).clone()
        else:
            v = CoordinateMedian(self.chunk_elems)(updates, w, row_scale=row_scale)
        tau = self.tau
        for _ in range(self.iters):
            dist = distances_to(updates, v, row_scale, self.chunk_elems)
            if tau is None:
                tau = float(median_block(dist.unsqueeze(1), w, False)) or 1.0
            scale = torch.where(dist > tau, tau / dist.clamp_min(1e-300), torch.ones_like(dist))
            coeff = w * scale
            v = v * float(1.0 - coeff.sum()) + combine_rows(updates, coeff, row_scale, self.chunk_elems)
        return v


@dataclass(frozen=True)
class GeometricMedian:
    """Geometric median by smoothed Weiszfeld, as in RFA (Pillutla, Kakade & Harchaoui, arXiv:1912.13445).

    Use: ``GeometricMedian(iters=10, nu=1e-6)(updates, weights)``. Minimises Σ w_i ||x_i − v|| with
    v ← Σ β_i x_i / Σ β_i, β_i = w_i / max(nu, ||x_i − v||), stopping early when the objective
    improves by less than ``ftol`` (relative). RFA starts from the mean; by default we start from the
    coordinate-wise median (``init="median"``), which needs far fewer iterations when outliers are huge
    (the fixed point is the same). Cost O(iters·n·d) (+ O(n·log n·d) for the median start).
    Tolerates attackers holding < 1/2 of the total weight (breakdown point 1/2).
    """

    iters: int = 10
    nu: float = 1e-6
    ftol: float = 1e-6
    init: str = "median"
    chunk_elems: int = DEFAULT_CHUNK_ELEMS
    supports_row_scale = True

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 row_scale: torch.Tensor | None = None, **_ctx: object) -> torch.Tensor:
        updates, w = check_inputs(updates, weights)
        if self.init == "median":
            v = CoordinateMedian(self.chunk_elems)(updates, w, row_scale=row_scale)
        elif self.init == "mean":
            v = combine_rows(updates, w, row_scale, self.chunk_elems)
        else:
            raise ValueError(f"geomed init must be median or mean, got {self.init!r}")
        dist = distances_to(updates, v, row_scale, self.chunk_elems)
        obj = float((w * dist).sum())
        for _ in range(self.iters):
            beta = w / dist.clamp_min(self.nu)
            v = combine_rows(updates, beta / beta.sum(), row_scale, self.chunk_elems)
            dist = distances_to(updates, v, row_scale, self.chunk_elems)
            new_obj = float((w * dist).sum())
            if obj - new_obj <= self.ftol * max(new_obj, 1e-30):
                break
            obj = new_obj
        return v


@dataclass(frozen=True)
class NormClipped:
    """Clip each update to norm ≤ bound, then apply ``rule``. Build with ``with_norm_clip``."""

    rule: Aggregator
    c: float | None = None
    multiplier: float = 1.0
    chunk_elems: int = field(default=DEFAULT_CHUNK_ELEMS)
    supports_row_scale = True

    def bound(self, norms: torch.Tensor) -> float:
        """The clipping bound: ``c`` if fixed, else multiplier × (unweighted) median of the norms."""
        if self.c is not None:
            return float(self.c)
        uniform = torch.full_like(norms, 1.0 / norms.numel())
        return self.multiplier * float(median_block(norms.unsqueeze(1), uniform, True))

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 row_scale: torch.Tensor | None = None, **ctx: object) -> torch.Tensor:
        updates, w = check_inputs(updates, weights)
        norms = row_norms(updates, row_scale, self.chunk_elems)
        bound = self.bound(norms)
        scale = torch.where(norms > bound, bound / norms.clamp_min(1e-300), torch.ones_like(norms))
        if row_scale is not None:
            scale = scale * row_scale.to(torch.float64)
        if getattr(self.rule, "supports_row_scale", False):
            # Lazy scaling: the inner rule multiplies rows chunk by chunk, no clipped n×d copy.
            return self.rule(updates, w, row_scale=scale, **ctx)
        return self.rule(updates * scale.to(updates.dtype).unsqueeze(1), w.to(torch.float32))


def with_norm_clip(rule: Aggregator, c: float | None = None, multiplier: float = 1.0) -> NormClipped:
    """Wrap ``rule`` so every update is first clipped to norm ≤ c (fixed) or ≤ multiplier × median norm.

    Use: ``with_norm_clip(TrimmedMean(0.2), multiplier=2.0)``. Cost O(n·d) for the norms. The
    median-norm bound holds as long as attackers are fewer than half the updates, so it bounds how
    far any single update (e.g. model replacement × n, arXiv:1807.00459) can pull the inner rule.
    """
    if c is not None and c <= 0:
        raise ValueError(f"norm clip bound c must be > 0, got {c}")
    if multiplier <= 0:
        raise ValueError(f"norm clip multiplier must be > 0, got {multiplier}")
    return NormClipped(rule, c, multiplier)


def with_bucketing(rule: Aggregator, s: int = 2, seed: int = 0) -> Bucketed:
    """Wrap ``rule`` with s-bucketing (arXiv:2006.09365). Use: ``with_bucketing(CoordinateMedian(), s=2)``."""
    if s < 1:
        raise ValueError(f"bucket size must be >= 1, got {s}")
    return Bucketed(rule, s, seed)
