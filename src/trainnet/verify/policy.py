"""Per-node reputation, for the operator's view and the simulator's report.

    rep = reputation(core.nodes[node_id])           # dict: tasks, accepted/rejected, audits, ban, score

The residual commitment chain that used to live here is part of the protocol engine now
(core/verification.py): the server and the simulator apply exactly the same rule.
"""

from __future__ import annotations

from typing import Any


def reputation(node: Any) -> dict[str, Any]:
    """Accounting for one coordinator NodeRecord: tasks, accepted/rejected, audits, ban, and a score.

    score = (audits passed + 1) / (audits run + 2) × accepted / max(1, accepted + rejected), 0 when
    banned: a Laplace-smoothed audit pass rate times the acceptance rate. It is informational (the
    ban decision is the coordinator's `ban_after_failures` rule on audit evidence)."""
    accepted, rejected = node.updates_accepted, node.updates_rejected
    audits = node.audits_passed + node.audits_failed
    score = 0.0 if node.banned else (node.audits_passed + 1) / (audits + 2) * accepted / max(1, accepted + rejected)
    return {
        "node_id": node.node_id, "tasks_leased": node.tasks_leased, "updates_accepted": accepted,
        "updates_rejected": rejected, "reject_reasons": dict(node.reject_reasons),
        "leases_expired": node.leases_expired, "tokens_accepted": node.tokens_accepted,
        "audits_passed": node.audits_passed, "audits_failed": node.audits_failed,
        "banned": node.banned, "ban_reason": node.ban_reason, "evidence": list(node.evidence),
        "score": round(score, 4),
    }
