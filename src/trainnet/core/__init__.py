"""The protocol engine (sans IO): leases, buffers, merge decisions, verification and bans; state as one value.

    from trainnet.core import Coordinator, CoordinatorConfig
"""

from trainnet.core.engine import COLLECTIONS, META_FIELDS, Coordinator
from trainnet.core.merging import BLOCK, FINAL, INIT, MERGE, WARM, shard_ranges
from trainnet.core.records import CoordinatorConfig, JoinToken, NodeRecord

__all__ = ["BLOCK", "COLLECTIONS", "FINAL", "INIT", "MERGE", "META_FIELDS", "WARM", "Coordinator",
           "CoordinatorConfig", "JoinToken", "NodeRecord", "shard_ranges"]
