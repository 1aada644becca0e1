"""Consensus that scales with the swarm: the quorum follows the number of active nodes.

    q = effective_quorum(base=4, active=4200, target_staleness=2.0)    # 2100

Each active node answers about one task per task-duration T, so updates arrive at `active / T`; a merge every
`quorum` arrivals publishes `active / quorum` versions per T, and an update's staleness (versions published
while its task ran) is about that number. A fixed quorum tuned for 8 workers therefore makes almost every
update of a 4,200-node swarm too stale (the issue measured hundreds of versions per task at quorum 4). Growing
the quorum to ceil(active / target_staleness) keeps the expected staleness near `target_staleness` whatever
the swarm size, and never below the configured quorum (small runs behave as before).
"""

from __future__ import annotations

import math


def effective_quorum(base: int, active: int, target_staleness: float) -> int:
    if target_staleness <= 0:
        return base
    return max(base, math.ceil(active / target_staleness))
