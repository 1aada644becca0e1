"""Gradient consensus: aggregation rules, staleness weights and the outer optimizer (pure functions)."""

from trainnet.consensus.aggregate import Aggregator, get_aggregator, mean
from trainnet.consensus.outer import OuterOptimizer
from trainnet.consensus.staleness import staleness_weight

__all__ = ["Aggregator", "OuterOptimizer", "get_aggregator", "mean", "staleness_weight"]
