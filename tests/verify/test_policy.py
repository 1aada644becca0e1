"""Reputation: the per-node record status and the simulator report (the chain rules: tests/core)."""

from __future__ import annotations

from trainnet.core.records import NodeRecord
from trainnet.verify import reputation


def test_reputation_score_and_ban():
    n = NodeRecord("n1", "", 0.0, 0.0, updates_accepted=3, updates_rejected=1, audits_passed=2)
    rep = reputation(n)
    assert rep["score"] == round(3 / 4 * 3 / 4, 4) and rep["audits_passed"] == 2 and not rep["banned"]
    n.banned, n.ban_reason = True, "failed 1 audit(s)"
    assert reputation(n)["score"] == 0.0 and reputation(n)["ban_reason"] == "failed 1 audit(s)"
