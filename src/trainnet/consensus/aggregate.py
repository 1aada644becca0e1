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

Aggregator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean; weights are non-negative and sum to 1. Cost O(n*d). Tolerates no attacker."""
    return weights.to(updates.dtype) @ updates


def get_aggregator(spec: str) -> Aggregator:
    """Resolve a rule by spec (`name` or `name:params`). Robust rules are imported on first use."""
    if spec == "mean":
        return mean
    try:
        robust = importlib.import_module("trainnet.consensus.robust")
    except ModuleNotFoundError:
        robust = None
    if robust is not None:
        if hasattr(robust, "parse_aggregator"):
            return robust.parse_aggregator(spec)
        table = getattr(robust, "ROBUST_AGGREGATORS", {})
        if spec in table:
            return table[spec]
    raise ValueError(f"unknown aggregator {spec!r}")
