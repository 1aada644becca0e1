"""From a rule spec and the measured norms of a merge's updates to what every aggregator shard applies.

    plan = plan_merge("norm_clip:2+trimmed_mean:0.2", norms=[...], weights=[...])
    # {"dense": False, "inner": "trimmed_mean", "beta": 0.2, "row_scale": [1.0, 0.31, ...], "bound": 0.84}
    plan = plan_merge("cclip:tau=1", ...)     # {"dense": True, "rule": "cclip:tau=1"}: needs the whole vector

A rule is *decomposable* when, once the per-update norms are known (the stats phase measures them as per-block
sums of squares, shard by shard), each coordinate's result depends on that coordinate alone: norm clipping in
front of a coordinate-wise rule (mean, median, trimmed mean). Such rules run on any number of aggregator
shards, chunk by chunk, with O(n x chunk) memory, and 1 shard and N shards give bit-identical results.
The others (cclip, geomed, Krum family, bucketing) need the whole vector in one place: `dense` plans run the
rule from consensus/robust.py on one shard holding all n updates (O(n x d) memory), as the old in-core merge
did; `trainnet coordinator --shards N` with N > 1 refuses them.
"""

from __future__ import annotations

from typing import Any

from trainnet.consensus.robust import DEFAULT_ROBUST_SPEC, _parse_stage, parse_rule

COORDINATE_RULES = {"mean": (), "median": (), "trimmed_mean": ("beta",)}


def resolve(spec: str) -> str:
    return DEFAULT_ROBUST_SPEC if spec == "robust" else spec


def decomposable(spec: str) -> bool:
    """True when the rule runs shard by shard (norm_clip wrappers around a coordinate-wise rule)."""
    stages = [s.strip() for s in resolve(spec).split("+")]
    last = stages[-1].partition(":")[0]
    return last in COORDINATE_RULES and all(s.partition(":")[0] == "norm_clip" for s in stages[:-1])


def _median(xs: list[float]) -> float:
    v = sorted(xs)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def plan_merge(spec: str, norms: list[float], weights: list[float]) -> dict[str, Any]:
    """The apply phase's decision for one merge (a JSON-able dict). Raises ValueError on a bad spec."""
    spec = resolve(spec)
    parse_rule(spec)  # validates the whole spec with the rules' own checks
    if not decomposable(spec):
        return {"dense": True, "rule": spec, "weights": list(weights)}
    stages = [s.strip() for s in spec.split("+")]
    name, kwargs = _parse_stage(stages[-1], COORDINATE_RULES[stages[-1].partition(":")[0]])
    beta = float(kwargs.get("beta", 0.1)) if name == "trimmed_mean" else 0.0
    if name == "trimmed_mean" and len(norms) - 2 * int(beta * len(norms)) < 1:
        raise ValueError(f"trimmed_mean(beta={beta}) trims everything of n={len(norms)} updates")
    scale = [1.0] * len(norms)
    bound = None
    for stage in reversed(stages[:-1]):  # wrappers apply left to right; all are norm clips of the same norms
        _, kw = _parse_stage(stage, ("multiplier", "c"))
        c, mult = kw.get("c"), float(kw.get("multiplier", 1.0) or 1.0)
        scaled = [n * s for n, s in zip(norms, scale, strict=True)]
        bound = float(c) if c is not None else mult * _median(scaled)
        scale = [s * (bound / x if x > bound else 1.0) for s, x in zip(scale, scaled, strict=True)]
    return {"dense": False, "inner": name, "beta": beta, "row_scale": scale, "bound": bound,
            "weights": list(weights)}
