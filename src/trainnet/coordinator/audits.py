"""Verification through the server: the residual commitment chain, audits awaiting a reveal, the verifier.

    book = AuditBook(reveal_s=600.0, enforce=cfg.verify_rate > 0)   # rebuilt by CoordinatorService._load
    ef = commitments(header.extra, required=book.enforce)           # (ef_in, ef_out) or None; 422 if malformed
    # under the service lock, inside the submit step:
    if book.chain_break(coord, node_id, task_id, ef, now, digest): ...   # evidence + coord.ban
    reply = coord.submit(msg, now)
    audit = book.accepted(coord, node_id, task_id, ef, update_path, now)   # {"reveal": bool, "deadline"}
    store.commit(..., **book.commit_args(coord, now)); book.committed(store)
    r_in, r_out = parse_residuals(body, template, ef_in, ef_out)   # POST /v1/audit/{task}/residuals body
    AuditRunner(svc).run_due(now, budget_s)                         # the verifier loop's round
    book.claims[task_id] = (verifier_node_id, deadline)           # verifiers = "nodes": verifier_api.py

The chain: an accepted update's ef_in must equal the node's last accepted ef_out, or be EMPTY_DIGEST (a
reset to the zero residual, always allowed: see docs/SECURITY.md, "Verification through the server").
Only accepted updates advance it; a break bans the node. An audited task whose residuals are not
empty waits for the worker to reveal them (`reveal_s` after acceptance, else it fails as "no_reveal");
the verifier then recomputes it off the request lock (Verifier.check) and reports the verdict with
coord.report_audit. Everything an audit needs is in SQLite (store.py, tables `audits` and `chain`)
and survives a restart.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as st_load

from trainnet.coordinator.core import Audit, Coordinator
from trainnet.coordinator.limits import ApiError
from trainnet.protocol.ids import ID_RE
from trainnet.protocol.messages import TaskSpec
from trainnet.protocol.wire import decode_update
from trainnet.verify import CHAIN_BREAK, EMPTY_DIGEST, CommitmentChain, Tolerance, Verifier, residual_digest

if TYPE_CHECKING:
    from trainnet.coordinator.service import CoordinatorService

log = logging.getLogger("trainnet.coordinator")

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
TASK_ID_RE = ID_RE  # one pattern for every id at the edge (protocol/ids.py)
CHAIN_BAN_REASON = "residual commitment chain broken"
NO_REVEAL = "no_reveal"
ParamDict = dict[str, torch.Tensor]


def commitments(extra: dict[str, Any], required: bool) -> tuple[str, str] | None:
    """The update header's (ef_in, ef_out) residual digests; None when absent and not required.
    Raises ApiError 422 bad_payload when malformed (or missing while the run verifies updates)."""
    if not required and "ef_in" not in extra and "ef_out" not in extra:
        return None
    out = []
    for name in ("ef_in", "ef_out"):
        v = extra.get(name)
        if not isinstance(v, str) or not DIGEST_RE.match(v):
            why = "; this run verifies updates, so ef_in and ef_out are required" if required else ""
            raise ApiError(422, "bad_payload",
                           f"update header extra.{name} must be a residual digest (64 lowercase hex digits){why}")
        out.append(v)
    return out[0], out[1]


@dataclass
class Pending:
    """What the server keeps about one audited task besides the core's Audit."""

    task_id: str
    node_id: str
    update_path: str
    ef_in: str
    ef_out: str
    deadline: float  # reveal deadline (server clock)
    residual_path: str | None = None

    @property
    def needs_reveal(self) -> bool:
        return self.ef_in != EMPTY_DIGEST or self.ef_out != EMPTY_DIGEST

    @property
    def ready(self) -> bool:
        return not self.needs_reveal or self.residual_path is not None


def _finite(detail: dict[str, Any]) -> dict[str, Any]:
    # JSON replies refuse NaN/inf; the verifier reports inf for a zero expected update.
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in detail.items()}


class AuditBook:
    """Server-side verification state: chain heads, pending audits' files and commitments, verdicts to
    commit. Mutated only under the service lock; written by the service's next `_persist`."""

    def __init__(self, reveal_s: float, enforce: bool) -> None:
        self.reveal_s, self.enforce = reveal_s, enforce
        self.chain = CommitmentChain()
        self.pending: dict[str, Pending] = {}
        self.verify_steps = 0  # inner steps the verifier recomputed, over the run's life
        # task_id -> (verifier node id, claim deadline): audits handed to designated verifier nodes
        # (verifier_api.py). Soft state, never persisted: after a restart every audit can be claimed again.
        self.claims: dict[str, tuple[str, float]] = {}
        self._chain_dirty: dict[str, tuple[str, str]] = {}
        self._verdicts: dict[str, dict[str, Any]] = {}
        self._closing: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ restart
    def restore(self, coord: Coordinator, snap: dict[str, Any], decode: Any, now: float) -> None:
        """Rebuild from store.load_audits(): chain heads, and each pending audit into coord.audits
        (`decode(update_path)` gives its claimed tensors back from the stored wire bytes). Reveal
        deadlines restart at `now` at the earliest: the server being down must not fail honest nodes."""
        self.chain.last_out = {n: ef for n, (ef, _) in snap["chain"].items()}
        self.verify_steps = snap["verify_steps"]
        for row in snap["audits"]:
            spec = TaskSpec(**json.loads(row["spec"]))
            p = Pending(row["task_id"], row["node_id"], row["update_path"], row["ef_in"], row["ef_out"],
                        float(row["reveal_deadline"]), row["residual_path"])
            if p.needs_reveal and p.residual_path is None:
                p.deadline = max(p.deadline, now + self.reveal_s)
            self.pending[p.task_id] = p
            try:
                claimed = decode(p.update_path)
            except Exception:  # the evidence is gone: the next commit closes the row as dropped
                log.exception("audit %s: stored update %s unreadable", p.task_id, p.update_path)
                continue
            coord.audits[p.task_id] = Audit(spec, claimed, float(row["accepted_at"]), row["merged_into"])

    # ------------------------------------------------------------------ submit path (under the lock)
    def chain_break(self, coord: Coordinator, node_id: str, task_id: str, ef: tuple[str, str] | None,
                    now: float, payload_sha256: str) -> bool:
        """Check an upload for a task this node holds against its chain; on a break, record the
        evidence and ban the node (coord.ban drops its pending updates). Returns True if banned now."""
        if not self.enforce or ef is None:
            return False
        node, lease = coord.nodes.get(node_id), coord.leases.get(task_id)
        if node is None or node.banned or lease is None or lease.spec.node_id != node_id:
            return False  # the core refuses it anyway; it never enters the model
        expected = self.chain.last_out.get(node_id, EMPTY_DIGEST)
        if self.chain.check(node_id, {"ef_in": ef[0], "ef_out": ef[1]}) != CHAIN_BREAK:
            return False
        node.evidence.append({"task_id": task_id, "time": now, "reason": CHAIN_BREAK, "ef_in": ef[0],
                              "expected": expected, "payload_sha256": payload_sha256})
        coord.ban(node_id, CHAIN_BAN_REASON, now)
        return True

    def accepted(self, coord: Coordinator, node_id: str, task_id: str, ef: tuple[str, str] | None,
                 update_path: str, now: float) -> dict[str, Any]:
        """The core accepted the update: advance the chain, and if the core selected the task for
        audit, start waiting for its residuals. Returns the submit reply's `audit` field."""
        if self.enforce and ef is not None:
            self.chain.advance(node_id, {"ef_out": ef[1]})
            self._chain_dirty[node_id] = (ef[1], task_id)
        if task_id not in coord.audits:
            return {"reveal": False}
        ef_in, ef_out = ef or (EMPTY_DIGEST, EMPTY_DIGEST)
        p = Pending(task_id, node_id, update_path, ef_in, ef_out, now + self.reveal_s)
        self.pending[task_id] = p
        return self.reply(p)

    @staticmethod
    def reply(p: Pending | None) -> dict[str, Any]:
        if p is None or not p.needs_reveal or p.residual_path is not None:
            return {"reveal": False}
        return {"reveal": True, "deadline": p.deadline}

    def reveal_info(self, node_id: str, task_id: str) -> dict[str, Any]:
        """The `audit` field for a replayed upload of a task this node already delivered."""
        p = self.pending.get(task_id)
        return self.reply(p if p is not None and p.node_id == node_id else None)

    def reveals_due(self, node_id: str) -> list[str]:
        return [t for t, p in self.pending.items()
                if p.node_id == node_id and p.needs_reveal and p.residual_path is None]

    # ------------------------------------------------------------------ reveal path (under the lock)
    def check_reveal(self, coord: Coordinator, node_id: str, task_id: str, now: float) -> ApiError | Pending:
        """The pending audit a reveal from `node_id` may fill, or the error to answer."""
        node = coord.nodes.get(node_id)
        if node is not None and node.banned:
            return ApiError(403, "banned", "node is banned")
        p = self.pending.get(task_id)
        if p is None or task_id not in coord.audits:
            return ApiError(404, "unknown_audit", "no pending audit for this task (not selected, already "
                                                  "decided, or dropped)")
        if p.node_id != node_id:
            return ApiError(409, "task_not_held", "this audit is another node's")
        if not p.needs_reveal:
            return ApiError(409, "reveal_not_needed", "the update committed to empty residuals")
        if p.residual_path is not None:
            return ApiError(409, "already_revealed", "the residuals of this task were already revealed")
        if now > p.deadline:
            return ApiError(409, "reveal_too_late", "the reveal deadline has passed")
        return p

    def revealed(self, coord: Coordinator, node_id: str, task_id: str, path: str, now: float) -> ApiError | None:
        p = self.check_reveal(coord, node_id, task_id, now)
        if isinstance(p, ApiError):
            return p
        p.residual_path = path
        return None

    # ------------------------------------------------------------------ verdicts and persistence
    def verdict(self, task_id: str, status: str, detail: dict[str, Any], now: float, steps: int) -> None:
        self._verdicts[task_id] = {"task_id": task_id, "status": status, "detail": detail, "finished": now,
                                   "steps": int(steps)}
        self.verify_steps += int(steps)

    def commit_args(self, coord: Coordinator, now: float) -> dict[str, Any]:
        """store.commit keyword arguments: pending rows (whole), closed rows, advanced chain heads. An
        audit the core no longer holds without a verdict was dropped with its node's ban."""
        rows, done = [], []
        for t, p in self.pending.items():
            a = coord.audits.get(t)
            v = self._verdicts.get(t)
            if v is not None:
                done.append(v | {"residual_path": p.residual_path if v["status"] == "failed" else None})
            elif a is None:
                done.append({"task_id": t, "status": "dropped", "finished": now, "steps": 0, "residual_path": None,
                             "detail": {"reason": "update dropped unmerged (node banned)"}})
            else:
                rows.append({"task_id": t, "node_id": p.node_id, "spec": json.dumps(a.spec.to_dict()),
                             "accepted_at": a.accepted_at, "update_path": p.update_path, "ef_in": p.ef_in,
                             "ef_out": p.ef_out, "reveal_deadline": p.deadline, "residual_path": p.residual_path,
                             "merged_into": a.merged_into})
        self._closing = done
        chain = [(n, ef, t) for n, (ef, t) in self._chain_dirty.items()]
        return {"audits": rows, "audits_done": done, "chain": chain}

    def committed(self, store: Any) -> None:
        """After the commit: forget closed audits; delete the residual files no longer needed (a failed
        audit keeps its file as evidence)."""
        for d in self._closing:
            p = self.pending.pop(d["task_id"], None)
            self.claims.pop(d["task_id"], None)
            if p is not None and p.residual_path and d["residual_path"] is None:
                store.delete_blob(p.residual_path)
        self._closing, self._verdicts, self._chain_dirty = [], {}, {}

    def summary(self, coord: Coordinator) -> dict[str, Any]:
        waiting = [p for t, p in self.pending.items() if t in coord.audits and not p.ready]
        return {"enabled": self.enforce, "reveal_s": self.reveal_s, "verify_steps": self.verify_steps,
                "audits_awaiting_reveal": len(waiting),
                "audits_ready": sum(1 for t, p in self.pending.items() if t in coord.audits and p.ready)}


def parse_residuals(body: bytes, template: ParamDict, ef_in: str, ef_out: str) -> tuple[ParamDict, ParamDict]:
    """A reveal body: safetensors of float32 tensors named r_in/<param> and r_out/<param> (a missing
    name is a zero residual), matching the model's shapes and the update's commitments. Raises ApiError
    422 (bad_residuals, residual_commitment); never unpickles."""
    try:
        tensors = st_load(body)
    except Exception as exc:  # safetensors raises its own error types on malformed input
        raise ApiError(422, "bad_residuals", f"body is not safetensors: {exc}"[:300]) from None
    parts: dict[str, ParamDict] = {"r_in": {}, "r_out": {}}
    for name, t in tensors.items():
        prefix, _, pname = name.partition("/")
        ref = template.get(pname)
        if prefix not in parts or ref is None:
            raise ApiError(422, "bad_residuals", f"unexpected tensor {name[:80]!r}: names are r_in/<parameter> "
                                                 "and r_out/<parameter> of the run's model")
        if t.dtype != torch.float32:
            raise ApiError(422, "bad_residuals", f"{name[:80]} has dtype {t.dtype}; residuals are float32")
        if tuple(t.shape) != tuple(ref.shape):
            raise ApiError(422, "bad_residuals", f"{name[:80]} has shape {tuple(t.shape)}, the parameter has "
                                                 f"{tuple(ref.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ApiError(422, "bad_residuals", f"{name[:80]} holds NaN or inf")
        parts[prefix][pname] = t
    for key, want in (("r_in", ef_in), ("r_out", ef_out)):
        if residual_digest(parts[key]) != want:
            raise ApiError(422, "residual_commitment", f"{key} does not match the update's ef_{key[2:]} commitment")
    return parts["r_in"], parts["r_out"]


def split_residuals(tensors: ParamDict) -> tuple[ParamDict, ParamDict]:
    """Stored reveal (already validated) -> (r_in, r_out)."""
    r_in = {k[5:]: v for k, v in tensors.items() if k.startswith("r_in/")}
    r_out = {k[6:]: v for k, v in tensors.items() if k.startswith("r_out/")}
    return r_in, r_out


@dataclass
class _Job:
    spec: TaskSpec
    pending: Pending
    base_path: str | None


class AuditRunner:
    """The verifier: fails overdue reveals, then recomputes ready audits oldest first, holding the
    service lock only to pick a job and to report its verdict (the recomputation runs outside)."""

    def __init__(self, svc: CoordinatorService) -> None:
        self.svc = svc
        self._verifier: Verifier | None = None
        self.steps_here = 0  # inner steps recomputed by this process since it started (0 with verifier nodes)

    def verifier(self) -> Verifier:
        if self._verifier is None:
            from trainnet.models import build_model

            c = self.svc.cfg.consensus
            torch.manual_seed(0)  # the init is overwritten by each audit's base parameters
            self._verifier = Verifier(build_model(self.svc.cfg.model), self.svc.codec,
                                      Tolerance(c.verify_rel_error, c.verify_min_cosine),
                                      device=self.svc.limits.verify_device)
        return self._verifier

    def run_due(self, now: float, budget_s: float) -> int:
        """One round of the verifier loop; returns how many audits were decided."""
        n = self.expire(now)
        start = time.monotonic()
        while time.monotonic() - start < budget_s:
            job = self._next()
            if job is None:
                break
            self._verify(job)
            n += 1
        return n

    def expire(self, now: float) -> int:
        """Fail every audit whose residuals were not revealed in time ("no_reveal")."""
        svc = self.svc

        def step() -> int:
            book, coord, n = svc.audits, svc.coord, 0
            for t, p in list(book.pending.items()):
                # report_audit may ban the node, which drops its other buffered updates' audits
                if t in coord.audits and not p.ready and now > p.deadline:
                    detail = {"reason": NO_REVEAL, "steps": 0, "deadline": p.deadline}
                    coord.report_audit(t, False, detail, now)
                    book.verdict(t, "failed", detail, now, 0)
                    n += 1
            return n

        with svc.lock:
            due = any(t in svc.coord.audits and not p.ready and now > p.deadline
                      for t, p in svc.audits.pending.items())
        return svc.locked_step(step, now, persist=lambda n: n > 0) if due else 0

    def _next(self) -> _Job | None:
        svc = self.svc
        with svc.lock:
            for a in svc.coord.pending_audits():
                p = svc.audits.pending.get(a.spec.task_id)
                if p is None or not p.ready:
                    continue
                # None cannot happen while _prune keeps audit bases; _verify then closes the audit
                return _Job(a.spec, Pending(**vars(p)), svc.store.version_path(a.spec.base_version))
        return None

    def _verify(self, job: _Job) -> None:
        svc, p, spec = self.svc, job.pending, job.spec
        v = self.verifier()
        steps0 = v.steps_recomputed
        try:
            if job.base_path is None:
                raise FileNotFoundError(f"base version {spec.base_version} not kept")
            base = st_load(svc.store.read_blob(job.base_path))
            shard = svc.corpus.shard(spec.shard_id, expect_sha256=spec.shard_sha256).tokens
            claimed = decode_update(svc.store.read_blob(p.update_path), limits=svc.wire_limits).tensors
            r_in, r_out = ({}, {}) if p.residual_path is None else \
                split_residuals(st_load(svc.store.read_blob(p.residual_path)))
            passed, detail = v.check(spec, base, shard, claimed, r_in, r_out, {"ef_in": p.ef_in, "ef_out": p.ef_out})
        except Exception as exc:  # our files or code, not the node's doing: close it without a verdict
            log.exception("audit %s could not be verified", p.task_id)
            why = f"verifier error: {exc}"[:200]
            svc.locked_step(lambda: self._close_if_pending(p.task_id, why), time.time())
            return
        steps = v.steps_recomputed - steps0
        self.steps_here += steps
        detail = _finite(detail)
        now = time.time()

        def report() -> bool:
            if p.task_id not in svc.coord.audits:  # dropped meanwhile (its node was banned)
                return False
            svc.coord.report_audit(p.task_id, passed, detail, now)
            svc.audits.verdict(p.task_id, "passed" if passed else "failed", detail, now, steps)
            return True

        svc.locked_step(report, now, persist=bool)
        log.info("audit %s of %s: %s %s", p.task_id, p.node_id, "passed" if passed else "FAILED", detail)

    def _close_if_pending(self, task_id: str, why: str) -> None:
        # Under the lock: the audit ends without a verdict (no evidence against the node).
        if task_id in self.svc.coord.audits:
            self.svc.coord.audits.pop(task_id)
            self.svc.audits.verdict(task_id, "unverifiable", {"reason": why}, time.time(), 0)
