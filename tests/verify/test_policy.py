"""The commitment chain's reset rule and check/advance split (the server advances only on acceptance)."""

from __future__ import annotations

from trainnet.coordinator.records import NodeRecord
from trainnet.verify import CHAIN_BREAK, EMPTY_DIGEST, CommitmentChain, reputation


def test_reset_to_the_empty_residual_is_always_allowed():
    chain = CommitmentChain()
    assert chain.observe("a", {"ef_in": EMPTY_DIGEST, "ef_out": "x1"}) == ""
    assert chain.observe("a", {"ef_in": EMPTY_DIGEST, "ef_out": "x2"}) == ""  # reset instead of x1
    assert chain.observe("a", {"ef_in": "x1", "ef_out": "x3"}) == CHAIN_BREAK  # the old head is gone
    assert chain.observe("a", {"ef_in": "x3", "ef_out": "x4"}) == ""


def test_check_records_nothing_until_advance():
    chain = CommitmentChain()
    up = {"ef_in": EMPTY_DIGEST, "ef_out": "x1"}
    assert chain.check("a", up) == "" and chain.last_out == {}
    assert chain.check("a", {"ef_in": "x1", "ef_out": "x2"}) == CHAIN_BREAK  # x1 was never accepted
    chain.advance("a", up)
    assert chain.check("a", {"ef_in": "x1", "ef_out": "x2"}) == ""
    assert chain.check("a", {"ef_in": "x1"}) == CHAIN_BREAK  # commitments must both be there


def test_reputation_score_and_ban():
    n = NodeRecord("n1", "", 0.0, 0.0, updates_accepted=3, updates_rejected=1, audits_passed=2)
    rep = reputation(n)
    assert rep["score"] == round(3 / 4 * 3 / 4, 4) and rep["audits_passed"] == 2 and not rep["banned"]
    n.banned, n.ban_reason = True, "failed 1 audit(s)"
    assert reputation(n)["score"] == 0.0 and reputation(n)["ban_reason"] == "failed 1 audit(s)"
