"""Designated verifier nodes: audits handed out over HTTP instead of recomputed by the coordinator.

    vapi = VerifierApi(api)                     # api: handlers.Api; active when ServerLimits.verifiers == "nodes"
    vapi.claim(headers, b"{}", now)             # {"audit": {...}} or {"audit": None, "reason", "retry_after_s"}
    vapi.material(task_id, headers, now)        # safetensors: update/<p>, r_in/<p>, r_out/<p> (float32)
    vapi.verdict(task_id, headers, body, now)   # {"ok": True, "task_id", "passed", "banned"}

A verifier is a registered node whose public key (hex) or node id is in `ServerLimits.verifier_keys`; any
other caller gets 403 `not_verifier`. `claim` hands out the oldest ready audit (its residuals revealed or
not needed) that no live claim holds and that is not the caller's own task; the claim lapses after
`audit_claim_s` (default `consensus.lease_s`) x max(1, steps / H) seconds, then anyone may claim it again.
Claims live in memory only (AuditBook.claims): a restart or reload forgets them, which only means the
audits are claimed afresh. The verdict is applied exactly like the built-in loop's (coord.report_audit,
AuditBook.verdict, one durable commit), by the claimant only, while its claim is live; the stored detail
names the verifier. The verifier fetches the base checkpoint (GET /v1/model/{v}, kept while the audit is
pending) and the shard (GET /v1/shard/{id}) itself. See docs/PROTOCOL.md, "Verifier nodes".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from trainnet.coordinator.audits import TASK_ID_RE, split_residuals
from trainnet.coordinator.core import REJECT_BANNED
from trainnet.coordinator.limits import ApiError, parse_json_object
from trainnet.protocol.messages import TaskSpec
from trainnet.protocol.wire import WireFormatError, decode_update

if TYPE_CHECKING:
    from trainnet.coordinator.handlers import Api

CLAIM_PATH = "/v1/audit/claim"
IDLE_RETRY_S = 2.0  # poll hint when nothing is ready and no claim is about to lapse
MAX_DETAIL_KEYS = 16
DETAIL_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# The only strings a verdict's detail may carry (Verifier.check's reasons; "which" residual commitment).
REASONS = frozenset({"ok", "update_mismatch", "residual_mismatch", "residual_commitment", "bad_shape"})
WHICH = frozenset({"ef_in", "ef_out"})


def check_detail(detail: Any, passed: bool) -> dict[str, Any]:
    """A verdict's detail: at most 16 keys (lowercase identifiers), finite numbers of at most 1e12 in
    magnitude, plus `reason` (one of REASONS, "ok" exactly when passed) and `which` (ef_in / ef_out).
    Raises ApiError 400 bad_request naming the offending field."""
    if not isinstance(detail, dict) or len(detail) > MAX_DETAIL_KEYS:
        raise ApiError(400, "bad_request", f"detail must be an object of at most {MAX_DETAIL_KEYS} keys")
    out: dict[str, Any] = {}
    for k, v in detail.items():
        if not DETAIL_KEY_RE.match(k):
            raise ApiError(400, "bad_request", f"detail key {k[:40]!r} must be a short lowercase identifier")
        if k == "reason":
            if v not in REASONS:
                raise ApiError(400, "bad_request", f"detail.reason must be one of {sorted(REASONS)}")
            if (v == "ok") != passed:
                raise ApiError(400, "bad_request", "detail.reason contradicts passed")
        elif k == "which":
            if v not in WHICH:
                raise ApiError(400, "bad_request", "detail.which must be 'ef_in' or 'ef_out'")
        elif k in ("verifier", "steps", "codec"):
            raise ApiError(400, "bad_request", f"detail.{k} is set by the server")
        elif isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or abs(v) > 1e12:
            raise ApiError(400, "bad_request", f"detail.{k} must be a finite number (|x| <= 1e12)")
        out[k] = v
    return out


class VerifierApi:
    """The three verifier endpoints over an Api (its service, signature check and rate limiter)."""

    def __init__(self, api: Api) -> None:
        self.api, self.svc = api, api.svc
        self.keys = self.svc.verifier_keys

    def is_verifier(self, public_key: str, node_id: str) -> bool:
        return public_key.lower() in self.keys or node_id in self.keys

    def _caller(self, headers: Mapping[str, str], method: str, path: str, body: bytes, now: float) -> str:
        """A registered, listed, not banned verifier's node id (401 / 404 / 403 otherwise)."""
        node_id, pub = self.api._authenticate(headers, path, body, now, method=method)
        if not self.is_verifier(pub, node_id):
            raise ApiError(403, "not_verifier", "this key is not a designated verifier of this run")
        with self.svc.lock:
            if self.svc.coord.nodes[node_id].banned:
                raise ApiError(403, REJECT_BANNED, "node is banned")
        return node_id

    def claim_span(self, spec: TaskSpec) -> float:
        c = self.svc.ccfg
        base = self.svc.limits.audit_claim_s or c.lease_s
        return base * max(1.0, int(spec.hparams.get("steps", c.h)) / max(1, c.h))

    # ------------------------------------------------------------------ endpoints
    def claim(self, headers: Mapping[str, str], body: bytes, now: float) -> dict[str, Any]:
        """POST /v1/audit/claim: the caller's own live claim if it has one (a lost reply), else the oldest
        ready audit nobody holds. Nothing to hand out: {"audit": None, "reason", "retry_after_s"}."""
        node_id = self._caller(headers, "POST", CLAIM_PATH, body, now)
        parse_json_object(body, {})
        svc = self.svc
        with svc.lock:
            book, coord = svc.audits, svc.coord
            lapse = math.inf
            for a in coord.pending_audits():
                t = a.spec.task_id
                p = book.pending.get(t)
                if p is None or not p.ready or p.node_id == node_id:  # never one's own task
                    continue
                held = book.claims.get(t)
                if held is not None and held[1] >= now and held[0] != node_id:
                    lapse = min(lapse, held[1] - now)
                    continue
                deadline = held[1] if held is not None and held[1] >= now else now + self.claim_span(a.spec)
                book.claims[t] = (node_id, deadline)
                return {"audit": self._offer(a.spec, p.ef_in, p.ef_out, deadline)}
            if coord.done and not coord.audits:
                return {"audit": None, "reason": "done", "retry_after_s": None}
            return {"audit": None, "reason": "none_ready", "retry_after_s": round(min(lapse, IDLE_RETRY_S), 3)}

    def _offer(self, spec: TaskSpec, ef_in: str, ef_out: str, deadline: float) -> dict[str, Any]:
        c, t = self.svc.cfg.consensus, spec.task_id
        return {"task_id": t, "spec": spec.to_dict(), "base_version": spec.base_version,
                "shard_id": spec.shard_id, "shard_sha256": spec.shard_sha256, "ef_in": ef_in, "ef_out": ef_out,
                "codec": self.svc.codec, "tolerance": {"rel_error": c.verify_rel_error,
                                                       "min_cosine": c.verify_min_cosine},
                "material": f"/v1/audit/{t}/material", "claim_deadline": deadline}

    def _held(self, node_id: str, task_id: str, now: float) -> ApiError | None:
        """Under the lock: None if `node_id` holds a live claim on a pending audit, else the error."""
        book, coord = self.svc.audits, self.svc.coord
        if task_id not in coord.audits or task_id not in book.pending:
            return ApiError(404, "unknown_audit", "no pending audit for this task (already decided or dropped)")
        held = book.claims.get(task_id)
        if held is None or held[0] != node_id:
            return ApiError(409, "not_claimed", "this audit is not claimed by you (POST /v1/audit/claim first)")
        if held[1] < now:
            return ApiError(409, "claim_expired", "your claim on this audit has lapsed; claim again")
        return None

    def material(self, task_id: str, headers: Mapping[str, str], now: float) -> bytes:
        """GET /v1/audit/{task_id}/material (signed, empty body): safetensors of float32 tensors
        `update/<param>` (the claimed update, decoded), `r_in/<param>` and `r_out/<param>` (the revealed
        residuals; absent names are zero). Only for the live claimant."""
        if not TASK_ID_RE.match(task_id):
            raise ApiError(404, "unknown_audit", "no such task")
        node_id = self._caller(headers, "GET", f"/v1/audit/{task_id}/material", b"", now)
        svc = self.svc
        with svc.lock:
            err = self._held(node_id, task_id, now)
            if err is not None:
                raise err
            p = svc.audits.pending[task_id]
            update_path, residual_path = p.update_path, p.residual_path
        try:  # off the lock; the files stay until the audit is closed (then: 404, as if decided)
            claimed = decode_update(svc.store.read_blob(update_path), limits=svc.wire_limits).tensors
            r_in, r_out = ({}, {}) if residual_path is None else \
                split_residuals(st_load(svc.store.read_blob(residual_path)))
        except (FileNotFoundError, WireFormatError):
            raise ApiError(404, "unknown_audit", "this audit was closed meanwhile") from None
        out = {f"update/{k}": v.to(torch.float32).contiguous() for k, v in claimed.items()}
        out |= {f"r_in/{k}": v.contiguous() for k, v in r_in.items()}
        out |= {f"r_out/{k}": v.contiguous() for k, v in r_out.items()}
        data = st_save(out, metadata={"task_id": task_id})
        svc.count_bytes("audit_material", len(data))
        return data

    def verdict(self, task_id: str, headers: Mapping[str, str], body: bytes, now: float) -> dict[str, Any]:
        """POST /v1/audit/{task_id}/verdict `{"passed": bool, "detail"?: {...}}`: applied like the built-in
        verifier's verdict (a failure is evidence; enough of them ban the node and drop its updates)."""
        if not TASK_ID_RE.match(task_id):
            raise ApiError(404, "unknown_audit", "no such task")
        node_id = self._caller(headers, "POST", f"/v1/audit/{task_id}/verdict", body, now)
        d = parse_json_object(body, {"passed": bool}, {"detail": dict}, self.svc.limits.max_string)
        passed = d["passed"]
        detail = check_detail(d.get("detail") or {}, passed)
        svc = self.svc
        banned: list[bool] = []

        def step() -> ApiError | None:
            err = self._held(node_id, task_id, now)
            if err is not None:
                return err
            spec = svc.coord.audits[task_id].spec
            steps = int(spec.hparams.get("steps", 0))  # what was recomputed, by the spec, not the caller's word
            full = detail | {"verifier": node_id, "steps": steps, "codec": spec.codec or svc.codec}
            banned.append(svc.coord.report_audit(task_id, passed, full, now))
            svc.audits.verdict(task_id, "passed" if passed else "failed", full, now, steps)
            svc.audits.claims.pop(task_id, None)
            return None

        err = svc.locked_step(step, now, persist=lambda e: e is None)
        if err is not None:
            raise err
        return {"ok": True, "task_id": task_id, "passed": passed, "banned": bool(banned and banned[0])}
