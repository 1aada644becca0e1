"""Aggregation rules: [n, d] stacked pseudo-gradients + [n] weights -> [d] aggregate.

    agg = get_aggregator("mean")          # weighted mean, the default
    agg = get_aggregator("trimmed_mean:0.2")  # robust rules live in consensus/robust.py

Rules are pure functions, so they are tested against small reference computations and swapped
without touching the coordinator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

# rule(updates [n, d], weights [n], *, center=previous aggregate or None, seed=int) -> [d]
Aggregator = Callable[..., torch.Tensor]


def mean(updates: torch.Tensor, weights: torch.Tensor, **_: object) -> torch.Tensor:
    """Weighted mean; weights are non-negative and sum to 1. Cost O(n*d). Tolerates no attacker.
    (Keyword context such as `center=` or `seed=`, used by robust rules, is ignored.)"""
    return weights.to(updates.dtype) @ updates


def get_aggregator(spec: str) -> Aggregator:
    """Resolve a rule by spec (`name` or `name:params`). Robust rules are imported on first use."""
    if spec == "mean":
        return mean
    robust = importlib.import_module("trainnet.consensus.robust")
    if spec == "robust":
        spec = robust.DEFAULT_ROBUST_SPEC
    return robust.parse_rule(spec)
