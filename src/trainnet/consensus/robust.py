"""Robust aggregation rules for gradient consensus: registry and spec parser.

Use:
    from trainnet.consensus.robust import ROBUST_AGGREGATORS, parse_rule
    agg = ROBUST_AGGREGATORS["trimmed_mean"](updates, weights)          # updates [n, d], weights [n]
    rule = parse_rule("norm_clip:2+trimmed_mean:0.2")                  # clip to 2× median norm, then trim
    rule = parse_rule("cclip:tau=1.0,iters=3,buckets=2"); rule(updates, weights, center=prev)
    rule = parse_rule("multikrum:f=2,m=4")

Every rule is an ``Aggregator``: ``rule(updates [n, d] float, weights [n] ≥ 0) -> [d] float32``, a pure,
deterministic function (frozen dataclass, no global state). Rules also accept optional keywords:
``center`` (previous aggregate; used by cclip), ``seed`` (bucketing permutation; vary per round) and
``row_scale`` (used by the norm-clip wrapper); rules that do not need a keyword ignore it.

Spec grammar: ``stage(+stage)*``; each stage is ``name[:arg,arg,...]`` with args positional values or
``key=value`` (values: int, float, none, true/false). All stages but the last are wrappers
(``norm_clip``, ``bucket``) applied left to right, i.e. ``norm_clip+bucket:2+median`` clips, then
buckets, then takes the median. Costs and tolerated attacker fractions are in each class docstring
and in docs/SECURITY.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .robust_clip import (
    Bucketed,
    CenteredClip,
    GeometricMedian,
    NormClipped,
    with_bucketing,
    with_norm_clip,
)
from .robust_common import DEFAULT_CHUNK_ELEMS, Aggregator, check_inputs, combine_rows, nonfinite_rows
from .robust_coord import CoordinateMedian, TrimmedMean
from .robust_krum import Bulyan, MultiKrum

__all__ = [
    "Aggregator", "ROBUST_AGGREGATORS", "DEFAULT_ROBUST_SPEC", "parse_rule", "WeightedMean",
    "CoordinateMedian", "TrimmedMean", "CenteredClip", "GeometricMedian", "MultiKrum", "Bulyan",
    "NormClipped", "Bucketed", "with_norm_clip", "with_bucketing", "nonfinite_rows",
]

# The suggested default defence: clip every update to 2× the median norm, then a 20% trimmed mean.
DEFAULT_ROBUST_SPEC = "norm_clip:2+trimmed_mean:0.2"


@dataclass(frozen=True)
class WeightedMean:
    """Plain weighted mean Σ w_i x_i, for composing with wrappers (``norm_clip+mean``). O(n·d); not robust."""

    chunk_elems: int = DEFAULT_CHUNK_ELEMS
    supports_row_scale = True

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor | None = None, *,
                 row_scale: torch.Tensor | None = None, **_ctx: object) -> torch.Tensor:
        updates, w = check_inputs(updates, weights)
        return combine_rows(updates, w, row_scale, self.chunk_elems)


# name -> (factory, positional parameter names, accepted keyword names)
_RULES: dict[str, tuple[Callable[..., Aggregator], tuple[str, ...]]] = {
    "mean": (WeightedMean, ()),
    "median": (CoordinateMedian, ()),
    "trimmed_mean": (TrimmedMean, ("beta",)),
    "cclip": (CenteredClip, ("tau", "iters", "buckets", "seed")),
    "geomed": (GeometricMedian, ("iters", "nu", "ftol", "init")),
    "krum": (lambda f=None: MultiKrum(f=f, m=1), ("f",)),
    "multikrum": (MultiKrum, ("f", "m")),
    "bulyan": (Bulyan, ("f",)),
}
_WRAPPERS: dict[str, tuple[Callable[..., Aggregator], tuple[str, ...]]] = {
    "norm_clip": (lambda rule, multiplier=1.0, c=None: with_norm_clip(rule, c=c, multiplier=multiplier),
                  ("multiplier", "c")),
    "bucket": (lambda rule, s=2, seed=0: with_bucketing(rule, s=s, seed=seed), ("s", "seed")),
}


def _value(text: str) -> object:
    t = text.strip()
    low = t.lower()
    if low in ("none", "null", ""):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        # Only a few string-valued options exist (geomed init); the rule validates them.
        if t.isidentifier():
            return t
        raise ValueError(f"cannot parse rule parameter value {text!r}") from None


def _parse_stage(stage: str, names: tuple[str, ...]) -> tuple[str, dict[str, object]]:
    name, _, argtext = stage.strip().partition(":")
    kwargs: dict[str, object] = {}
    if argtext.strip():
        for pos, item in enumerate(argtext.split(",")):
            key, eq, val = item.partition("=")
            if eq:
                key = key.strip()
            elif pos < len(names):
                key, val = names[pos], item
            else:
                raise ValueError(f"{name}: too many positional parameters in {stage!r} (takes {names})")
            if key not in names:
                raise ValueError(f"{name}: unknown parameter {key!r}; accepted: {', '.join(names) or 'none'}")
            kwargs[key] = _value(val)
    return name.strip(), kwargs


def parse_rule(spec: str) -> Aggregator:
    """Build an aggregator from a spec such as ``"trimmed_mean:0.2"`` or ``"norm_clip:c=5+cclip:tau=1"``.

    Raises ValueError on an unknown rule/wrapper name or parameter. Plain registry names work too.
    """
    stages = [s for s in spec.split("+")]
    if not stages or not stages[-1].strip():
        raise ValueError(f"empty aggregation rule spec {spec!r}")
    last = stages[-1].strip().partition(":")[0].strip()
    if last not in _RULES:
        raise ValueError(f"unknown aggregation rule {last!r}; known: {', '.join(sorted(_RULES))}")
    factory, names = _RULES[last]
    _, kwargs = _parse_stage(stages[-1], names)
    rule = _build(factory, spec, **kwargs)
    for stage in reversed(stages[:-1]):
        wname = stage.strip().partition(":")[0].strip()
        if wname not in _WRAPPERS:
            raise ValueError(f"unknown rule wrapper {wname!r}; known: {', '.join(sorted(_WRAPPERS))}")
        wfactory, wnames = _WRAPPERS[wname]
        _, wkwargs = _parse_stage(stage, wnames)
        rule = _build(wfactory, spec, rule, **wkwargs)
    return rule


def _build(factory: Callable[..., Aggregator], spec: str, *args: object, **kwargs: object) -> Aggregator:
    # A parameter of the wrong type (e.g. beta="x") surfaces as TypeError deep inside; report it as a bad spec.
    try:
        return factory(*args, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad parameters in aggregation rule spec {spec!r}: {exc}") from None


ROBUST_AGGREGATORS: dict[str, Aggregator] = {
    "median": CoordinateMedian(),
    "trimmed_mean": TrimmedMean(beta=0.2),
    "cclip": CenteredClip(),
    "geomed": GeometricMedian(),
    "krum": MultiKrum(m=1),
    "multikrum": MultiKrum(),
    "bulyan": Bulyan(),
    "norm_clip+trimmed_mean": parse_rule(DEFAULT_ROBUST_SPEC),
}
