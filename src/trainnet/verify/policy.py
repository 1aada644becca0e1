"""Ban policy helpers and per-node reputation.

    chain = CommitmentChain()
    problem = chain.observe(node_id, header_extra)   # "" or "residual_chain_break"
    rep = reputation(coord.nodes[node_id])           # dict for run status / simulator JSON

The residual commitment chain: the ef_in a node commits to in an upload must equal the ef_out of the
last upload the coordinator received from it. Without this check a worker could swap its residual
between two tasks (outside any audited task) and smuggle an arbitrary vector into later, honestly
recomputable uploads. With it, changing the residual is only possible inside a task, whose own audit
recomputes r_out. A worker whose upload never reached the coordinator must roll its residual back
to the state before that encode (the coordinator never saw the commitment).
"""

from __future__ import annotations

from typing import Any

from trainnet.verify.commit import EMPTY_DIGEST

CHAIN_BREAK = "residual_chain_break"


class CommitmentChain:
    """Remembers each node's last committed ef_out and checks the next upload's ef_in against it."""

    def __init__(self) -> None:
        self.last_out: dict[str, str] = {}

    def observe(self, node_id: str, extra: dict[str, Any]) -> str:
        """Record an upload's commitments; returns CHAIN_BREAK if its ef_in does not continue the chain
        (or the commitments are missing), else ""."""
        ef_in, ef_out = extra.get("ef_in"), extra.get("ef_out")
        if not isinstance(ef_in, str) or not isinstance(ef_out, str):
            return CHAIN_BREAK
        expected = self.last_out.get(node_id, EMPTY_DIGEST)
        self.last_out[node_id] = ef_out
        return "" if ef_in == expected else CHAIN_BREAK


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
