"""Robust aggregation rules against small reference computations (numpy / plain loops)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from trainnet.consensus.robust import (
    DEFAULT_ROBUST_SPEC,
    ROBUST_AGGREGATORS,
    Bucketed,
    Bulyan,
    CenteredClip,
    CoordinateMedian,
    GeometricMedian,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
    parse_rule,
    with_bucketing,
    with_norm_clip,
)


def _data(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.rand(n, generator=g) + 0.1
    return x, w / w.sum()


def _uniform(n: int) -> torch.Tensor:
    return torch.full((n,), 1.0 / n)


@pytest.mark.parametrize("n", [5, 6])
def test_median_matches_numpy(n: int) -> None:
    x, _ = _data(n, 300)
    out = CoordinateMedian()(x, _uniform(n))
    np.testing.assert_allclose(out.numpy(), np.median(x.numpy(), axis=0), rtol=0, atol=1e-6)


def test_weighted_median_property() -> None:
    x, w = _data(7, 200, seed=1)
    out = CoordinateMedian()(x, w).numpy()
    xs, ws = x.numpy(), w.numpy().astype(np.float64)
    for j in range(xs.shape[1]):
        below = ws[xs[:, j] < out[j]].sum()
        above = ws[xs[:, j] > out[j]].sum()
        assert below <= 0.5 + 1e-9 and above <= 0.5 + 1e-9
        assert out[j] in xs[:, j]  # no exact tie at 1/2 with random weights: a data point


def test_weighted_median_ignores_zero_weight_and_equal_weights_midpoint() -> None:
    x = torch.tensor([[1.0], [2.0], [100.0], [4.0]])
    w = torch.tensor([0.25, 0.25, 0.0, 0.5])
    assert float(CoordinateMedian()(x, w)[0]) == pytest.approx(3.0)  # cum weight hits 1/2 at 2 → (2+4)/2
    x2 = torch.tensor([[1.0], [2.0], [3.0], [10.0]])
    w2 = torch.tensor([0.2, 0.2, 0.2, 0.4])  # nonuniform but crosses 1/2 strictly inside 3.0
    assert float(CoordinateMedian()(x2, w2)[0]) == pytest.approx(3.0)


@pytest.mark.parametrize("n,beta", [(10, 0.2), (7, 0.3), (5, 0.0)])
def test_trimmed_mean_matches_numpy(n: int, beta: float) -> None:
    x, _ = _data(n, 300, seed=2)
    k = int(beta * n)
    ref = np.sort(x.numpy(), axis=0)[k:n - k].mean(axis=0)
    np.testing.assert_allclose(TrimmedMean(beta)(x, _uniform(n)).numpy(), ref, atol=1e-6)


def test_weighted_trimmed_mean_matches_loop() -> None:
    x, w = _data(8, 50, seed=3)
    out = TrimmedMean(0.25)(x, w).numpy()
    xs, ws = x.numpy(), w.numpy()
    for j in range(xs.shape[1]):
        order = np.argsort(xs[:, j], kind="stable")[2:6]
        ref = (xs[order, j] * ws[order]).sum() / ws[order].sum()
        assert out[j] == pytest.approx(ref, abs=1e-5)


def _rules_for_chunk_test(chunk: int) -> list:
    return [
        CoordinateMedian(chunk), TrimmedMean(0.2, chunk), CenteredClip(iters=4, chunk_elems=chunk),
        CenteredClip(tau=0.5, buckets=2, chunk_elems=chunk), GeometricMedian(chunk_elems=chunk),
        MultiKrum(f=2, m=3, chunk_elems=chunk), Bulyan(f=1, chunk_elems=chunk), WeightedMean(chunk),
    ]


def test_chunked_equals_unchunked() -> None:
    x, w = _data(9, 301, seed=4)
    for small, big in zip(_rules_for_chunk_test(150), _rules_for_chunk_test(1 << 22), strict=True):
        torch.testing.assert_close(small(x, w), big(x, w), rtol=1e-5, atol=1e-5, msg=repr(small))
    clipped_small = with_norm_clip(TrimmedMean(0.2, 150), multiplier=1.0)
    torch.testing.assert_close(clipped_small(x, w), with_norm_clip(TrimmedMean(0.2), multiplier=1.0)(x, w))


def _brute_krum_scores(xs: np.ndarray, f: int) -> np.ndarray:
    n = len(xs)
    scores = []
    for i in range(n):
        d = sorted(float(((xs[i] - xs[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return np.array(scores)


def test_krum_and_multikrum_selection_match_brute_force() -> None:
    x, w = _data(9, 20, seed=5)
    x[3] += 5.0  # make selection non-trivial
    scores = _brute_krum_scores(x.numpy().astype(np.float64), f=2)
    order = np.argsort(scores, kind="stable")
    assert MultiKrum(f=2, m=1).select(x).tolist() == order[:1].tolist()
    assert MultiKrum(f=2, m=4).select(x).tolist() == order[:4].tolist()
    chosen = order[:4]
    ref = (x.numpy()[chosen] * w.numpy()[chosen, None]).sum(0) / w.numpy()[chosen].sum()
    np.testing.assert_allclose(MultiKrum(f=2, m=4)(x, w).numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(ROBUST_AGGREGATORS["krum"](x, w).numpy(), x.numpy()[order[0]], atol=1e-6)


def test_bulyan_matches_reference_loop() -> None:
    n, f = 11, 2
    x, _ = _data(n, 30, seed=6)
    xs = x.numpy().astype(np.float64)
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * f):
        sub = xs[remaining]
        k = min(max(1, len(remaining) - f - 2), len(remaining) - 1)
        sc = [sum(sorted(((sub[i] - sub[j]) ** 2).sum() for j in range(len(sub)) if j != i)[:k])
              for i in range(len(sub))]
        chosen.append(remaining.pop(int(np.argmin(sc))))
    sel = xs[chosen]
    beta = len(chosen) - 2 * f
    med = np.median(sel, axis=0)
    near = np.argsort(np.abs(sel - med), axis=0, kind="stable")[:beta]
    ref = np.take_along_axis(sel, near, axis=0).mean(axis=0)
    assert Bulyan(f=f).select(x)[0].tolist() == chosen
    np.testing.assert_allclose(Bulyan(f=f)(x, _uniform(n)).numpy(), ref, atol=1e-5)


def test_geomed_symmetric_case_and_weiszfeld_reference() -> None:
    c = torch.tensor([1.0, -2.0, 3.0])
    pts = torch.cat([c + 2 * torch.eye(3), c - 2 * torch.eye(3), (c + 50).unsqueeze(0)])
    pts = pts[:6]  # symmetric cross around c: geometric median is c exactly
    torch.testing.assert_close(GeometricMedian(iters=50)(pts, _uniform(6)), c, atol=1e-4, rtol=0)
    x, w = _data(7, 5, seed=7)
    xs, ws = x.numpy().astype(np.float64), w.numpy().astype(np.float64)
    v = (ws[:, None] * xs).sum(0)
    for _ in range(2000):  # plain Weiszfeld to convergence
        b = ws / np.maximum(np.linalg.norm(xs - v, axis=1), 1e-12)
        v = (b[:, None] * xs).sum(0) / b.sum()
    out = GeometricMedian(iters=500, ftol=0.0)(x, w).numpy()
    np.testing.assert_allclose(out, v, atol=1e-3)


def test_cclip_fixed_point_mean_limit_and_center() -> None:
    c = torch.tensor([0.5, -1.0, 2.0, 0.0])
    pts = torch.cat([c + 3 * torch.eye(4), c - 3 * torch.eye(4)])
    w = _uniform(8)
    # Symmetric points far outside tau: the clipped pulls cancel, c is a fixed point.
    torch.testing.assert_close(CenteredClip(tau=1.0, iters=5)(pts, w, center=c), c)
    # Starting off-centre the iteration contracts towards c.
    start = c + torch.tensor([0.8, 0.0, 0.0, 0.0])
    after = CenteredClip(tau=1.0, iters=30)(pts, w, center=start)
    assert float((after - c).norm()) < 0.1 * float((start - c).norm())
    # Infinite tau: one step from any centre is the weighted mean.
    x, wr = _data(6, 40, seed=8)
    torch.testing.assert_close(CenteredClip(tau=1e9, iters=1)(x, wr, center=torch.zeros(40)),
                               WeightedMean()(x, wr), atol=1e-5, rtol=1e-5)
    # Tiny tau: the result moves at most tau·iters away from the given centre.
    prev = torch.full((40,), 7.0)
    assert float((CenteredClip(tau=1e-3, iters=2)(x, wr, center=prev) - prev).norm()) <= 2e-3 + 1e-6


def test_norm_clip_fixed_and_median_bound_and_lazy_equals_copy() -> None:
    x = torch.tensor([[10.0, 0.0], [0.0, 0.5], [3.0, 4.0]])
    w = _uniform(3)
    expect = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.6, 0.8]]).mean(0)
    torch.testing.assert_close(with_norm_clip(WeightedMean(), c=1.0)(x, w), expect)
    # Median norm = 5, so the 10-norm row is cut to 5; a plain (foreign) callable gets a clipped copy.
    foreign = with_norm_clip(lambda u, ww: (u * ww.unsqueeze(1)).sum(0), multiplier=1.0)
    expect2 = torch.tensor([[5.0, 0.0], [0.0, 0.5], [3.0, 4.0]]).mean(0)
    torch.testing.assert_close(foreign(x, w), expect2)
    torch.testing.assert_close(with_norm_clip(WeightedMean(), multiplier=1.0)(x, w), expect2)


def test_robust_rules_resist_huge_outliers_while_mean_does_not() -> None:
    n_h, f, d = 12, 3, 64
    g = torch.Generator().manual_seed(9)
    honest = 1.0 + 0.1 * torch.randn(n_h, d, generator=g)
    x = torch.cat([honest, torch.full((f, d), 1e6)])
    w = _uniform(n_h + f)
    target = honest.mean(0)
    assert float((WeightedMean()(x, w) - target).norm()) > 1e4
    rules = dict(ROBUST_AGGREGATORS)
    rules["bulyan"] = Bulyan(f=3)
    rules["cclip_bucketed"] = parse_rule("cclip:buckets=2")
    rules["norm_clip+mean"] = parse_rule("norm_clip:1+mean")
    for name, rule in rules.items():
        err = float((rule(x, w) - target).norm())
        assert err < 1.5, f"{name} moved by {err}"


def test_errors_for_bad_n_and_inputs() -> None:
    x, w = _data(6, 4)
    with pytest.raises(ValueError, match="n > 2f"):
        MultiKrum(f=2)(x, w)
    with pytest.raises(ValueError, match="n >= 4f"):
        Bulyan(f=1)(x, w)
    # Auto f (the registry's rules) degrades to f = 0 on tiny grace-window merges instead of failing:
    # Krum picks one of the two rows, Bulyan averages both.
    picked = ROBUST_AGGREGATORS["krum"](x[:2], _uniform(2))
    assert any(torch.allclose(picked, x[i]) for i in range(2))
    assert torch.allclose(Bulyan()(x[:2], _uniform(2)), x[:2].mean(dim=0), atol=1e-6)
    with pytest.raises(ValueError):
        TrimmedMean(0.5)
    with pytest.raises(ValueError):
        CoordinateMedian()(x, -w)
    with pytest.raises(ValueError):
        CoordinateMedian()(x, w[:3])
    with pytest.raises(ValueError):
        CoordinateMedian()(x[0], w)
    with pytest.raises(ValueError):
        CenteredClip()(x, w, center=torch.zeros(3))
    nan = x.clone()
    nan[4, 2] = float("nan")
    nan[1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"rows \[1, 4\]"):
        TrimmedMean(0.2)(nan, w)


def test_parse_rule_specs() -> None:
    assert parse_rule("trimmed_mean:0.2") == TrimmedMean(0.2)
    assert parse_rule("cclip:tau=1.0,iters=3,buckets=2") == CenteredClip(tau=1.0, iters=3, buckets=2)
    assert parse_rule("multikrum:f=2,m=4") == MultiKrum(f=2, m=4)
    assert parse_rule("krum:1") == MultiKrum(f=1, m=1)
    r = parse_rule("norm_clip:c=5+bucket:3+median")
    assert r.c == 5 and isinstance(r.rule, Bucketed) and r.rule.s == 3
    assert parse_rule(DEFAULT_ROBUST_SPEC) == ROBUST_AGGREGATORS["norm_clip+trimmed_mean"]
    for bad in ["nope", "median:1", "trimmed_mean:beta=x", "cclip:gamma=1", "wrap+median", ""]:
        with pytest.raises(ValueError):
            parse_rule(bad)


def test_bucketing_deterministic_by_seed_and_s1_is_identity() -> None:
    x, w = _data(10, 30, seed=10)
    b = with_bucketing(CoordinateMedian(), s=2)
    torch.testing.assert_close(b(x, w, seed=3), b(x, w, seed=3))
    assert not torch.equal(b(x, w, seed=3), b(x, w, seed=4))
    torch.testing.assert_close(with_bucketing(TrimmedMean(0.2), s=1)(x, w), TrimmedMean(0.2)(x, w))


@pytest.mark.parametrize("name", sorted(ROBUST_AGGREGATORS))
def test_registry_rules_deterministic_shape_dtype(name: str) -> None:
    x, w = _data(11, 257, seed=11)
    a, b = ROBUST_AGGREGATORS[name](x, w), ROBUST_AGGREGATORS[name](x.clone(), w.clone())
    assert a.shape == (257,) and a.dtype == torch.float32 and torch.equal(a, b)


def test_all_rules_equal_for_identical_updates() -> None:
    v = torch.linspace(-1, 1, 33)
    x = v.repeat(9, 1)
    for name, rule in itertools.chain(ROBUST_AGGREGATORS.items(), [("bulyan1", Bulyan(f=1))]):
        torch.testing.assert_close(rule(x, _uniform(9)), v, msg=name)
