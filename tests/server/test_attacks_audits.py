"""Verification under attack (issue 10): withheld reveals, forged reveals, reveals by other nodes, and the
verifier-node endpoints called by a node that is not a designated verifier. In-process (audit_api.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_helpers import Harness, refusal, server_limits  # noqa: E402

from trainnet.worker.reveal import reveal_body  # noqa: E402


def test_withheld_reveal_fails_as_no_reveal_at_the_deadline_and_bans() -> None:
    h = Harness.open(limits=server_limits(join_token="s", join_token_max_keys=8))
    issued = h.api.issue_token(max_keys=3, label="cheater")
    cheat, honest = h.node(join_token=issued["token"]), h.node(join_token="s")
    t_cheat, t_honest = h.lease(cheat), h.lease(honest)
    r_cheat = h.upload(cheat, t_cheat, h.honest_update(cheat, t_cheat))
    r_honest = h.upload(honest, t_honest, h.honest_update(honest, t_honest))
    assert r_cheat["audit"]["reveal"] and r_honest["audit"]["reveal"]  # probation: first updates are audited
    h.reveal(honest, t_honest["task_id"])
    deadline = r_cheat["audit"]["deadline"]
    h.clock.now = deadline - 1.0
    h.tick()
    assert not h.core.nodes[cheat.node_id].banned  # not before the deadline
    h.clock.now = deadline + 1.0
    h.tick()
    node = h.core.nodes[cheat.node_id]
    assert node.banned and node.evidence[-1]["reason"] == "no_reveal"
    row = h.svc.state.log_get("audits", t_cheat["task_id"])
    assert row["status"] == "failed" and row["detail"]["reason"] == "no_reveal"
    assert h.core.tokens[issued["token_id"]].revoked  # the token it came with is revoked
    assert refusal(lambda: h.node(join_token=issued["token"])).code == "token_revoked"
    assert h.post(cheat, "/v1/lease", {}, h.api.lease)["reason"] == "banned"
    assert refusal(lambda: h.reveal(cheat, t_cheat["task_id"])).status in (403, 404, 409)
    assert not h.core.nodes[honest.node_id].banned  # the honest node, audited the same way, is unaffected
    assert h.lease(honest)["base_version"] == h.core.version


def test_reveals_that_lie_or_come_from_another_node() -> None:
    h = Harness.open()
    a, b = h.node(), h.node()
    task = h.lease(a)
    h.upload(a, task, h.honest_update(a, task))
    tid = task["task_id"]
    before = h.stored()
    assert refusal(lambda: h.reveal(b, tid)).code == "task_not_held"  # b reveals into a's audit
    zeros = reveal_body({k: torch.zeros_like(v) for k, v in h.svc.spec.template.items()}, {})
    assert refusal(lambda: h.reveal(a, tid, zeros)).code == "residual_commitment"
    wrong = reveal_body({"no.such.param": torch.zeros(3)}, {})
    assert refusal(lambda: h.reveal(a, tid, wrong)).code == "bad_residuals"
    assert refusal(lambda: h.reveal(a, tid, b"\x00" * 64)).code == "bad_residuals"
    assert h.stored() == before  # nothing of a refused reveal is kept
    assert h.reveal(a, tid)["ok"]
    assert refusal(lambda: h.reveal(a, tid)).code == "already_revealed"


def test_verifier_endpoints_refuse_a_node_that_is_not_a_verifier() -> None:
    h = Harness.open()
    n = h.node()
    task = h.lease(n)
    h.upload(n, task, h.honest_update(n, task))
    h.reveal(n, task["task_id"])
    before = h.stored()

    def call(path: str, method: str = "POST"):
        caller = h.api.auth.caller(h.headers(n, method, path, b""), method, path, h.clock.now)
        return caller
    tid = task["task_id"]
    err = refusal(lambda: h.api.audits.claim(call("/v1/audit/claim"), h.clock.now))
    assert (err.status, err.code) == (403, "not_verifier")
    err = refusal(lambda: h.api.audits.material(call(f"/v1/audit/{tid}/material", "GET"), tid, h.clock.now))
    assert (err.status, err.code) == (403, "not_verifier")
    err = refusal(lambda: h.api.audits.verdict(call(f"/v1/audit/{tid}/verdict"), tid, True, {}, h.clock.now))
    assert (err.status, err.code) == (403, "not_verifier")
    assert h.stored() == before and h.core.audits[tid].claimed_by is None
