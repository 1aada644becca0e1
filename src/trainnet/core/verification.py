"""Verification inside the engine: the residual commitment chain, audit selection, reveals with deadlines,
verifier claims, verdicts, evidence and bans — messages and state transitions only.

    audit = core.submit(...).audit                       # {"reveal": True, "deadline": t} when selected
    core.check_reveal(node_id, task_id, now)             # AuditRecord or a reject code (nothing changes)
    core.reveal(node_id, task_id, residual_blob, now)    # "" or a reject code
    a, why, retry = core.claim_audit(verifier_id, now)   # the oldest ready audit nobody holds
    err, banned = core.verdict(verifier_id, task_id, passed, detail, now)
    core.ban(node_id, reason, now, evidence)             # drops its buffered updates, leases; revokes its token

Recomputing an audited task is an effect: the shell (the coordinator's built-in verifier loop or a designated
verifier node) fetches the task's public inputs, runs `Verifier.check` and reports the verdict here. The
simulator and the server therefore ban by exactly the same rules (docs/SECURITY.md).

The chain: an accepted update's ef_in must equal the node's last accepted ef_out, or be EMPTY_DIGEST (a reset
to the zero residual, always allowed). Only accepted updates advance it; a break bans the node.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from trainnet.core.records import REJECT_BANNED, REJECT_WRONG_NODE, AuditRecord, NodeRecord, Pending
from trainnet.protocol.messages import TaskSpec, UpdateSubmission
from trainnet.verify.commit import EMPTY_DIGEST

CHAIN_BAN_REASON = "residual commitment chain broken"
CHAIN_BREAK = "residual_chain_break"
NO_REVEAL = "no_reveal"
IDLE_RETRY_S = 2.0


class VerifyMixin:
    """Methods of `Coordinator` (engine.py) that implement verification; state lives on the engine."""

    # ------------------------------------------------------------------ submit path
    @property
    def verifying(self) -> bool:
        return self.cfg.verify_rate > 0

    def reveal_s(self) -> float:
        return self.cfg.reveal_s or 10.0 * self.cfg.lease_s

    def _chain_break(self, node: NodeRecord, msg: UpdateSubmission, now: float) -> bool:
        """True (and the node banned, with the evidence) if this upload's ef_in breaks its chain."""
        if not self.verifying:
            return False
        expected = self.chain.get(node.node_id, EMPTY_DIGEST)
        if msg.ef_in in (EMPTY_DIGEST, expected) and msg.ef_out:
            return False
        evidence = {"task_id": msg.task_id, "time": now, "reason": CHAIN_BREAK, "ef_in": msg.ef_in,
                    "expected": expected, "payload_sha256": msg.sha256}
        self.ban(node.node_id, CHAIN_BAN_REASON, now, evidence)
        return True

    def _after_accept(self, node: NodeRecord, spec: TaskSpec, msg: UpdateSubmission, now: float) -> dict[str, Any]:
        """Advance the chain; select the task for audit (probation first, then the keyed rate)."""
        if not self.verifying:
            return {"reveal": False}
        self.chain[node.node_id] = msg.ef_out
        self._changes.touch("chain", node.node_id)
        if not self._audit_selected(spec, node):
            return {"reveal": False}
        ef_in, ef_out = msg.ef_in or EMPTY_DIGEST, msg.ef_out or EMPTY_DIGEST
        needs = ef_in != EMPTY_DIGEST or ef_out != EMPTY_DIGEST
        a = AuditRecord(spec.task_id, node.node_id, spec, msg.blob, msg.sha256, ef_in, ef_out, now,
                        now + self.reveal_s() if needs else None)
        self.audits[a.task_id] = a
        self._changes.touch("audits", a.task_id)
        self._emit(now, "audit_requested", node_id=node.node_id, task_id=a.task_id)
        return self.audit_reply_of(a)

    def _regular(self, codec: str, base_version: int) -> bool:
        """Not the warm start (one long task with its own codec, applied as is)."""
        return codec == self.cfg.codec and not (self.cfg.warm_start_tokens > 0 and base_version == 0)

    def _audit_selected(self, spec: TaskSpec, node: NodeRecord) -> bool:
        # Probation: a node's first regular updates are always audited (the warm start, one long task with its
        # own codec, is too large for that and follows verify_rate). Counted on probation_seen, not on
        # updates_accepted: that one also counted the warm start (the warm-start node's first regular update
        # then escaped probation), and an update dropped unmerged takes its probation audit with it, so a
        # node could skip probation by making its first upload invalid (_drop_pending gives the slot back).
        if self._regular(spec.codec, spec.base_version):
            node.probation_seen += 1
            if node.probation_seen <= self.cfg.verify_probation:
                return True
        digest = hashlib.sha256(f"{self.cfg.audit_key}:{self.cfg.seed}:{spec.task_id}".encode()).digest()
        return int.from_bytes(digest[:8], "little") / 2**64 < self.cfg.verify_rate

    @staticmethod
    def audit_reply_of(a: AuditRecord | None) -> dict[str, Any]:
        if a is None or a.reveal_deadline is None or a.residual_blob is not None:
            return {"reveal": False}
        return {"reveal": True, "deadline": a.reveal_deadline}

    def audit_reply(self, node_id: str, task_id: str) -> dict[str, Any]:
        """The submit reply's `audit` field for a replayed upload of a task this node already delivered."""
        a = self.audits.get(task_id)
        return self.audit_reply_of(a if a is not None and a.node_id == node_id else None)

    def reveals_due(self, node_id: str) -> list[str]:
        """Audited tasks of this node still waiting for its residuals (a lease reply repeats them)."""
        return sorted(t for t, a in self.audits.items() if a.node_id == node_id and not a.ready)

    # ------------------------------------------------------------------ reveals
    def check_reveal(self, node_id: str, task_id: str, now: float) -> AuditRecord | str:
        """The audit a reveal from `node_id` may fill, or the reject code (changes nothing)."""
        node = self.nodes.get(node_id)
        if node is not None and node.banned:
            return REJECT_BANNED
        a = self.audits.get(task_id)
        if a is None:
            return "unknown_audit"
        if a.node_id != node_id:
            return REJECT_WRONG_NODE
        if a.reveal_deadline is None:
            return "reveal_not_needed"
        if a.residual_blob is not None:
            return "already_revealed"
        if now > a.reveal_deadline:
            return "reveal_too_late"
        return a

    def reveal(self, node_id: str, task_id: str, residual_blob: str, now: float) -> str:
        a = self.check_reveal(node_id, task_id, now)
        if isinstance(a, str):
            return a
        a.residual_blob = residual_blob
        self._changes.touch("audits", task_id)
        self._emit(now, "audit_revealed", node_id=node_id, task_id=task_id)
        return ""

    def _expire_reveals(self, now: float) -> None:
        due = [a for a in self.audits.values() if not a.ready and now > a.reveal_deadline]
        # In deadline order, not the audits' dict order (which a restored engine gets from its store's row
        # order): the failures' evidence, events and the ban reason must not depend on it.
        for a in sorted(due, key=lambda a: (a.reveal_deadline, a.task_id)):
            self._report(a, False, {"reason": NO_REVEAL, "deadline": a.reveal_deadline}, now, 0, "")

    # ------------------------------------------------------------------ verifiers
    def claim_span(self, spec: TaskSpec) -> float:
        base = self.cfg.audit_claim_s or self.cfg.lease_s
        return base * max(1.0, int(spec.hparams.get("steps", self.cfg.h)) / max(1, self.cfg.h))

    def claim_audit(self, verifier: str, now: float) -> tuple[AuditRecord | None, str, float | None]:
        """The verifier's own live claim (a lost reply), else the oldest ready audit nobody holds that is not
        the verifier's own task. (None, "none_ready", retry_s) or (None, "done", None) when there is none."""
        lapse, best = math.inf, None
        for a in self.audits.values():
            if not a.ready or a.node_id == verifier:
                continue
            if a.claimed_by is not None and a.claim_deadline >= now:
                if a.claimed_by == verifier:
                    return a, "", None
                lapse = min(lapse, a.claim_deadline - now)
                continue
            if best is None or (a.accepted_at, a.task_id) < (best.accepted_at, best.task_id):
                best = a
        if best is not None:
            best.claimed_by, best.claim_deadline = verifier, now + self.claim_span(best.spec)
            self._changes.touch("audits", best.task_id)
            return best, "", None
        if self.done and not self.audits:
            return None, "done", None
        return None, "none_ready", round(min(lapse, IDLE_RETRY_S), 3)

    def verdict(self, verifier: str, task_id: str, passed: bool, detail: dict[str, Any],
                now: float) -> tuple[str, bool]:
        """A claimant's verdict: ("", banned_now) or (reject code, False)."""
        a = self.audits.get(task_id)
        if a is None:
            return "unknown_audit", False
        if a.claimed_by != verifier:
            return "not_claimed", False
        if a.claim_deadline < now:
            return "claim_expired", False
        steps = int(a.spec.hparams.get("steps", 0))  # what was recomputed, by the spec, not the caller's word
        return "", self._report(a, passed, detail | {"verifier": verifier, "steps": steps}, now, steps, verifier)

    def close_unverifiable(self, task_id: str, why: str, now: float) -> None:
        """The audit ends without a verdict (our files or the verifier's device, not the node's doing)."""
        a = self.audits.pop(task_id, None)
        if a is not None:
            self._changes.touch("audits", task_id)
            self._changes.log("audits", task_id, a.to_doc() | {"status": "unverifiable", "detail": {"reason": why},
                                                                 "finished": now, "steps": 0})

    def _report(self, a: AuditRecord, passed: bool, detail: dict[str, Any], now: float, steps: int,
                verifier: str) -> bool:
        """Record a verdict; a failure is evidence, and enough of it bans the node. True if banned now."""
        self.audits.pop(a.task_id, None)
        self._changes.touch("audits", a.task_id)
        self.verify_steps += steps
        node = self.nodes[a.node_id]
        status = "passed" if passed else "failed"
        self._changes.log("audits", a.task_id, a.to_doc() | {"status": status, "detail": detail, "finished": now,
                                                               "steps": steps})
        self._changes.meta = True
        self._touch_node(node)
        if passed:
            node.audits_passed += 1
            self.audits_passed += 1
            self._emit(now, "audit_passed", node_id=node.node_id, task_id=a.task_id)
            return False
        node.audits_failed += 1
        self.audits_failed += 1
        node.evidence.append({"task_id": a.task_id, "time": now, **detail})
        self._emit(now, "audit_failed", node_id=node.node_id, task_id=a.task_id,
                   reason=str(detail.get("reason", "")))
        if not node.banned and node.audits_failed >= self.cfg.ban_after_failures:
            self.ban(node.node_id, f"failed {node.audits_failed} audit(s)", now)
            return True
        return False

    # ------------------------------------------------------------------ bans
    def ban(self, node_id: str, reason: str, now: float, evidence: dict[str, Any] | None = None) -> int:
        """Ban a node: refuse it from now on, drop its buffered (not yet merged) updates and its leases (their
        shards are requeued), leave its updates out of a merge still being measured, and, when it joined with a
        personal token, revoke that token and ban the token's other keys (a shared token stays open). Returns
        how many of this node's buffered updates were dropped."""
        node = self.nodes[node_id]
        if node.banned:
            return 0
        node.banned, node.ban_reason = True, reason
        if evidence:
            node.evidence.append(evidence)
        self.nodes_banned += 1
        self._touch_node(node)
        self._changes.meta = True
        dropped = [p for p in self.buffer.values() if p.node_id == node_id]
        for p in dropped:
            self._drop_pending(p, "node banned", now)
        for job in self.jobs.values():
            if job.phase == "stats":
                for u in job.updates:
                    if u["node_id"] == node_id:
                        job.excluded[u["task_id"]] = "node banned"
                self._changes.touch("jobs", job.job_id)
        for task_id in sorted(self._node_leases.get(node_id, ())):
            lease = self._drop_lease(task_id)
            self.requeue.append((lease.spec.shard_id, lease.spec.seed))
        self._emit(now, "node_banned", node_id=node_id, reason=reason, dropped=len(dropped))
        tok = self.tokens.get(node.token_id) if node.token_id else None
        if tok is not None and not tok.shared and not tok.revoked:
            # A personal token is one participant: the cheater's other keys go with it (else a Sybil with one
            # token and several keys keeps working under the others), and the token registers no more.
            tok.revoked = f"node {node_id} banned: {reason}"
            self._changes.touch("tokens", tok.token_id)
            for sibling in tok.keys:
                if sibling != node_id and sibling in self.nodes:
                    self.ban(sibling, f"same join token as banned node {node_id}", now)
        return len(dropped)

    def _drop_pending(self, p: Pending, reason: str, now: float, in_buffer: bool = True) -> None:
        """An accepted update leaves without being merged: its data is trained again by someone else."""
        if in_buffer:
            self.buffer.pop(p.task_id, None)
            self._changes.touch("buffer", p.task_id)
        self.requeue.append(p.shard)
        self.tokens_accepted -= p.tokens
        self.updates_dropped += 1
        self._changes.meta = True
        node = self.nodes.get(p.node_id)
        if node is not None:
            node.updates_dropped += 1
            node.tokens_accepted -= p.tokens
            if self.verifying and self._regular(p.codec, p.base_version):
                node.probation_seen -= 1  # its audit is dropped too: probation is not served by it
            self._touch_node(node)
        self._changes.log("updates", p.task_id, p.to_doc() | {"merged_into": -1, "dropped": reason})
        a = self.audits.pop(p.task_id, None)
        if a is not None:
            self._changes.touch("audits", p.task_id)
            self._changes.log("audits", p.task_id, a.to_doc() | {"status": "dropped", "finished": now, "steps": 0,
                                                                   "detail": {"reason": f"update dropped: {reason}"}})
        self._emit(now, "update_dropped", node_id=p.node_id, task_id=p.task_id, reason=reason)
