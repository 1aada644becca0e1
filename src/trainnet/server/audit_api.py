"""Verification's effects in the service: residual reveals, designated verifier nodes, the built-in verifier.

    audits.reveal(caller, task_id, body, now)        # POST /v1/audit/{task}/residuals (safetensors r_in/r_out)
    audits.claim(caller, now); audits.material(caller, task_id, now); audits.verdict(caller, task_id, d, now)
    audits.verify_once(now)                          # the coordinator's own verifier: claim, recompute, report

The engine decides (core/verification.py); this module only moves bytes and runs the recomputation, which
needs the task's public inputs: the published model it started from (rebuilt from the version manifests,
aggregate/publish.py), the shard by hash, the update as stored and the revealed residuals.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from trainnet.protocol.ids import is_id
from trainnet.protocol.wire import WireFormatError
from trainnet.server.auth import Caller
from trainnet.server.limits import ApiError
from trainnet.server.recompute import Recomputer, load_material
from trainnet.server.service import Service
from trainnet.verify import Unverifiable, residual_digest

log = logging.getLogger("trainnet.coordinator")
BUILTIN = "coordinator"  # the claimant id of the built-in verifier (never a node id: those start with "n")
MAX_DETAIL_KEYS = 16
DETAIL_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
REASONS = frozenset({"ok", "update_mismatch", "residual_mismatch", "residual_commitment", "bad_shape"})
WHICH = frozenset({"ef_in", "ef_out"})
ParamDict = dict[str, torch.Tensor]


def check_detail(detail: Any, passed: bool) -> dict[str, Any]:
    """A verdict's detail from a verifier node: at most 16 short keys, finite numbers, a known reason."""
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


def parse_residuals(body: bytes, template: ParamDict, ef_in: str, ef_out: str) -> tuple[ParamDict, ParamDict]:
    """A reveal body: safetensors of float32 r_in/<param> and r_out/<param> (a missing name is a zero residual)
    matching the model's shapes and the update's commitments. ApiError 422 otherwise; never unpickles."""
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
        if t.dtype != torch.float32 or tuple(t.shape) != tuple(ref.shape):
            raise ApiError(422, "bad_residuals", f"{name[:80]} must be float32 of shape {tuple(ref.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ApiError(422, "bad_residuals", f"{name[:80]} holds NaN or inf")
        parts[prefix][pname] = t
    for key, want in (("r_in", ef_in), ("r_out", ef_out)):
        if residual_digest(parts[key]) != want:
            raise ApiError(422, "residual_commitment", f"{key} does not match the update's ef_{key[2:]} commitment")
    return parts["r_in"], parts["r_out"]


ERROR_STATUS = {"banned": 403, "unknown_audit": 404, "task_not_held": 409, "reveal_not_needed": 409,
                "already_revealed": 409, "reveal_too_late": 409, "not_claimed": 409, "claim_expired": 409}


class AuditApi:
    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.keys = frozenset(k.strip().lower() for k in svc.limits.verifier_keys if k.strip())
        if svc.limits.verifiers not in ("coordinator", "nodes"):
            raise ValueError(f"verifiers must be 'coordinator' or 'nodes', not {svc.limits.verifiers!r}")
        if svc.limits.verifiers == "nodes" and not self.keys:
            raise ValueError("verifiers = 'nodes' needs at least one verifier key (--verifier-keys FILE)")
        if svc.limits.verifiers == "coordinator" and self.keys:
            raise ValueError("verifier keys are only used with verifiers = 'nodes'")
        if svc.ccfg.verify_rate > 0 and svc.ccfg.precision == "bf16" and svc.limits.verifiers == "coordinator" \
                and not svc.limits.verify_device.startswith("cuda"):
            raise ValueError("inner.precision = 'bf16' with verification needs a GPU verifier (--verify-device cuda)"
                             " or designated verifier nodes; or use precision 'fp32'/'auto'")
        layout = svc.spec.layout
        self.reveal_cap = 8 * layout.numel + 256 * len(layout.names) + 4096  # r_in + r_out in float32 + header
        self._recomputer: Recomputer | None = None
        self.pool: Any = None  # a DataPlanePool (server/pool.py) when the runtime has one
        self.steps_here = 0

    # ------------------------------------------------------------------ reveals
    def check_reveal(self, caller: Caller, task_id: str, now: float) -> None:
        """Before the body is read: is there an audit this node may reveal into?"""
        if not is_id(task_id):
            raise ApiError(404, "unknown_audit", "no such task")
        a = self.svc.read(lambda c: c.check_reveal(caller.node_id, task_id, now))
        if isinstance(a, str):
            raise ApiError(ERROR_STATUS.get(a, 409), a, "reveal refused")

    def reveal(self, caller: Caller, task_id: str, body: bytes, now: float) -> dict[str, Any]:
        svc = self.svc
        a = svc.read(lambda c: c.check_reveal(caller.node_id, task_id, now))
        if isinstance(a, str):
            raise ApiError(ERROR_STATUS.get(a, 409), a, "reveal refused")
        parse_residuals(body, svc.spec.shapes, a.ef_in, a.ef_out)
        key = f"audits/{secrets.token_hex(16)}.safetensors"
        svc.blobs.put(key, body)
        err = svc.step(lambda c: c.reveal(caller.node_id, task_id, key, now))
        if err:
            svc.blobs.delete(key)
            raise ApiError(ERROR_STATUS.get(err, 409), err, "reveal refused")
        return {"ok": True, "task_id": task_id}

    # ------------------------------------------------------------------ verifier nodes
    def is_verifier(self, public_key: str, node_id: str) -> bool:
        return public_key.lower() in self.keys or node_id in self.keys

    def _verifier_caller(self, caller: Caller) -> None:
        if self.svc.limits.verifiers != "nodes" or not self.is_verifier(caller.public_key, caller.node_id):
            raise ApiError(403, "not_verifier", "this key is not a designated verifier of this run")
        if caller.banned:
            raise ApiError(403, "banned", "node is banned")

    def offer(self, a: Any) -> dict[str, Any]:
        c = self.svc.spec.cfg.consensus
        return {"task_id": a.task_id, "spec": a.spec.to_dict(), "base_version": a.spec.base_version,
                "shard_id": a.spec.shard_id, "shard_sha256": a.spec.shard_sha256, "ef_in": a.ef_in, "ef_out": a.ef_out,
                "codec": a.spec.codec, "tolerance": {"rel_error": c.verify_rel_error, "min_cosine": c.verify_min_cosine},
                "material": f"/v1/audit/{a.task_id}/material", "claim_deadline": a.claim_deadline}

    def claim(self, caller: Caller, now: float) -> dict[str, Any]:
        self._verifier_caller(caller)
        a, why, retry = self.svc.step(lambda c: c.claim_audit(caller.node_id, now))
        if a is None:
            return {"audit": None, "reason": why, "retry_after_s": retry}
        return {"audit": self.offer(a)}

    def _held(self, caller: Caller, task_id: str, now: float) -> Any:
        def look(c: Any) -> Any:
            a = c.audits.get(task_id)
            if a is None:
                return "unknown_audit"
            if a.claimed_by != caller.node_id:
                return "not_claimed"
            if a.claim_deadline < now:
                return "claim_expired"
            return a
        a = self.svc.read(look)
        if isinstance(a, str):
            raise ApiError(ERROR_STATUS.get(a, 409), a, "this audit is not claimed by you")
        return a

    def material(self, caller: Caller, task_id: str, now: float) -> bytes:
        """The claimed audit's update (decoded) and revealed residuals as float32 safetensors."""
        self._verifier_caller(caller)
        if not is_id(task_id):
            raise ApiError(404, "unknown_audit", "no such task")
        a = self._held(caller, task_id, now)
        claimed, r_in, r_out = self._material(a)
        out = {f"update/{k}": v.contiguous() for k, v in claimed.items()}
        out |= {f"r_in/{k}": v.contiguous() for k, v in r_in.items()}
        out |= {f"r_out/{k}": v.contiguous() for k, v in r_out.items()}
        data = st_save(out, metadata={"task_id": task_id})
        self.svc.count_bytes("audit_material", len(data))
        return data

    def verdict(self, caller: Caller, task_id: str, passed: bool, detail: dict[str, Any],
                now: float) -> dict[str, Any]:
        self._verifier_caller(caller)
        detail = check_detail(detail, passed)
        err, banned = self.svc.step(lambda c: c.verdict(caller.node_id, task_id, passed, detail, now))
        if err:
            raise ApiError(ERROR_STATUS.get(err, 409), err, "verdict refused")
        return {"ok": True, "task_id": task_id, "passed": passed, "banned": banned}

    # ------------------------------------------------------------------ the built-in verifier
    def _material(self, a: Any) -> tuple[ParamDict, ParamDict, ParamDict]:
        try:
            return load_material(self.svc.spec, self.svc.blobs, a)
        except WireFormatError as exc:
            raise ApiError(409, "unknown_audit", f"the stored update is unreadable: {exc}") from None

    def _inline(self) -> Recomputer:
        if self._recomputer is None:
            c = self.svc.spec.cfg.consensus
            self._recomputer = Recomputer(self.svc.spec, self.svc.blobs, self.svc.ccfg.codec,
                                          (c.verify_rel_error, c.verify_min_cosine), self.svc.limits.verify_device)
        return self._recomputer

    def base_params(self, version: int) -> ParamDict:
        """A published version's parameters, rebuilt from the signed manifests (what a verifier trains from)."""
        return self._inline().base_params(version)

    def recompute(self, a: Any) -> tuple[bool, dict[str, Any], int]:
        """In the data-plane pool when there is one; inline otherwise (the simulator)."""
        if self.pool is not None:
            c = self.svc.spec.cfg.consensus
            return self.pool.recompute(a.to_doc(), self.svc.ccfg.codec, (c.verify_rel_error, c.verify_min_cosine),
                                       self.svc.limits.verify_device)
        return self._inline().recompute(a)

    def verify_once(self, now: float) -> bool:
        """Claim one ready audit as the coordinator, recompute it off the lock, report the verdict."""
        svc = self.svc
        if svc.ccfg.verify_rate <= 0 or svc.limits.verifiers != "coordinator":
            return False
        a, _, _ = svc.step(lambda c: c.claim_audit(BUILTIN, now))
        if a is None:
            return False
        try:
            passed, detail, steps = self.recompute(a)
        except Unverifiable as exc:
            why = str(exc)[:200]
            svc.step(lambda c: c.close_unverifiable(a.task_id, why, svc.clock()))
            return True
        except Exception as exc:  # our files or code, not the node's doing: no verdict against it
            log.exception("audit %s could not be verified", a.task_id)
            why = f"verifier error: {exc}"[:200]
            svc.step(lambda c: c.close_unverifiable(a.task_id, why, svc.clock()))
            return True
        self.steps_here += steps
        end = svc.clock()
        err, banned = svc.step(lambda c: c.verdict(BUILTIN, a.task_id, passed, detail, end))
        if not err:
            log.info("audit %s of %s: %s%s", a.task_id, a.node_id, "passed" if passed else "FAILED",
                     " (node banned)" if banned else "")
        return True
