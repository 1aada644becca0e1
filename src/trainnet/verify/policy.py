"""Ban policy helpers and per-node reputation.

    chain = CommitmentChain()
    problem = chain.observe(node_id, header_extra)   # "" or "residual_chain_break"
    rep = reputation(coord.nodes[node_id])           # dict for run status / simulator JSON

The residual commitment chain: the ef_in a node commits to in an upload must equal the ef_out of the
last upload the coordinator received (the server: accepted) from it, or be EMPTY_DIGEST. Without this
check a worker could swap its residual between two tasks (outside any audited task) and smuggle an
arbitrary vector into later, honestly recomputable uploads. With it, changing the residual is only
possible inside a task, whose own audit recomputes r_out. The one exception, a reset to the zero
residual (ef_in = EMPTY_DIGEST), cannot smuggle anything in: a zero residual adds nothing to the next
upload, so that upload is exactly recomputable from public inputs. It lets an honest worker recover
when it does not know whether its last upload arrived: it resets its residual instead of guessing
which commitment the coordinator holds. A worker whose upload was refused rolls its residual back to
the state before that encode (the chain did not advance).
"""

from __future__ import annotations

from typing import Any

from trainnet.verify.commit import EMPTY_DIGEST

CHAIN_BREAK = "residual_chain_break"


class CommitmentChain:
    """Remembers each node's last committed ef_out and checks the next upload's ef_in against it."""

    def __init__(self) -> None:
        self.last_out: dict[str, str] = {}

    def check(self, node_id: str, extra: dict[str, Any]) -> str:
        """CHAIN_BREAK if the upload's ef_in neither continues the chain nor resets it to EMPTY_DIGEST
        (or the commitments are missing), else "". Records nothing."""
        ef_in, ef_out = extra.get("ef_in"), extra.get("ef_out")
        if not isinstance(ef_in, str) or not isinstance(ef_out, str):
            return CHAIN_BREAK
        ok = ef_in in (EMPTY_DIGEST, self.last_out.get(node_id, EMPTY_DIGEST))
        return "" if ok else CHAIN_BREAK

    def advance(self, node_id: str, extra: dict[str, Any]) -> None:
        """The upload was accepted: its ef_out is what the node's next ef_in must continue from."""
        self.last_out[node_id] = str(extra["ef_out"])

    def observe(self, node_id: str, extra: dict[str, Any]) -> str:
        """check() then advance() (the simulator: every received upload advances the chain);
        returns CHAIN_BREAK or ""."""
        problem = self.check(node_id, extra)
        if isinstance(extra.get("ef_out"), str):
            self.advance(node_id, extra)
        return problem


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
