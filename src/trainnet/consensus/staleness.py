"""Staleness weights for asynchronous updates (FedBuff / FedAsync style polynomial decay)."""

from __future__ import annotations


def staleness_weight(tau: int, power: float) -> float:
    """(1 + tau) ** -power: a fresh update weighs 1, an update 3 versions stale weighs 0.5 at power 0.5."""
    if tau < 0:
        raise ValueError(f"staleness must be >= 0 (got {tau})")
    return float((1 + tau) ** -power)
