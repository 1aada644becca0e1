"""Verification's effects in the service: residual reveals, designated verifier nodes, the built-in verifier.

    audits.reveal(caller, task_id, body, now)        # POST /v1/audit/{task}/residuals (safetensors r_in/r_out)
    audits.claim(caller, now); audits.material(caller, task_id, now); audits.verdict(caller, task_id, d, now)
    audits.verify_once(now)                          # the coordinator's own verifier: claim, recompute, report

The engine decides (core/verification.py); this module only moves bytes and runs the recomputation, which
needs the task's public inputs: the published model it started from (rebuilt from the version manifests,
aggregate/publish.py), the shard by hash, the update as stored and the revealed residuals.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from trainnet.aggregate import keys
from trainnet.aggregate.publish import Reconstructor
from trainnet.protocol.ids import is_id
from trainnet.protocol.messages import TaskSpec
from trainnet.protocol.wire import WireFormatError, WireLimits, decode_update
from trainnet.server.auth import Caller
from trainnet.server.limits import ApiError
from trainnet.server.service import Service
from trainnet.verify import Tolerance, Unverifiable, Verifier, residual_digest

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


def split_residuals(tensors: ParamDict) -> tuple[ParamDict, ParamDict]:
    return ({k[5:]: v for k, v in tensors.items() if k.startswith("r_in/")},
            {k[6:]: v for k, v in tensors.items() if k.startswith("r_out/")})


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
        layout = svc.spec.layout
        self.reveal_cap = 8 * layout.numel + 256 * len(layout.names) + 4096  # r_in + r_out in float32 + header
        self._verifier: Verifier | None = None
        self._base: tuple[int, torch.Tensor] | None = None  # the last reconstructed base version (reused)
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
        parse_residuals(body, svc.spec.template, a.ef_in, a.ef_out)
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
        svc = self.svc
        data = svc.blobs.get(a.blob)
        limits = WireLimits(max_total_bytes=len(data) + 1, max_total_elements=max(1, svc.spec.layout.numel),
                            max_elements_per_tensor=max(1, svc.spec.layout.numel))
        try:
            claimed = decode_update(data, limits=limits).tensors
        except WireFormatError as exc:
            raise ApiError(409, "unknown_audit", f"the stored update is unreadable: {exc}") from None
        r_in, r_out = ({}, {}) if a.residual_blob is None else split_residuals(st_load(svc.blobs.get(a.residual_blob)))
        return claimed, r_in, r_out

    def verifier(self) -> Verifier:
        if self._verifier is None:
            from trainnet.server.runspec import build_model

            c = self.svc.spec.cfg.consensus
            self._verifier = Verifier(build_model(self.svc.spec.cfg, seed=0), self.svc.ccfg.codec,
                                      Tolerance(c.verify_rel_error, c.verify_min_cosine),
                                      device=self.svc.limits.verify_device)
        return self._verifier

    def base_params(self, version: int) -> ParamDict:
        """θ̃ of a published version, rebuilt from the manifests (the last one is kept for the next audit)."""
        svc = self.svc
        r = Reconstructor(lambda v: json.loads(svc.blobs.get(keys.manifest(v))), svc.blobs.get, svc.spec.layout.numel)
        flat = r.get(version, self._base if self._base is not None and self._base[0] <= version else None)
        self._base = (version, flat)
        return svc.spec.layout.unflatten(flat)

    def recompute(self, a: Any) -> tuple[bool, dict[str, Any], int]:
        """(passed, detail, steps) of an audit recomputed here; raises Unverifiable when it cannot be judged."""
        v = self.verifier()
        steps0 = v.steps_recomputed
        spec: TaskSpec = a.spec
        base = self.base_params(spec.base_version)
        shard = self.svc.spec.corpus.shard(spec.shard_id, expect_sha256=spec.shard_sha256).tokens
        claimed, r_in, r_out = self._material(a)
        passed, detail = v.check(spec, base, shard, claimed, r_in, r_out, {"ef_in": a.ef_in, "ef_out": a.ef_out})
        detail = {k: (x if not isinstance(x, float) or math.isfinite(x) else str(x)) for k, x in detail.items()}
        return passed, detail, v.steps_recomputed - steps0

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
