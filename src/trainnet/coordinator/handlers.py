"""The HTTP API's operations as plain functions over a CoordinatorService (no web framework here).

    api = Api(service, join_token="secret", allow_keys={"<hex pubkey or node id>", ...})
    api.register(headers, body, now) -> dict      # raises ApiError(status, code, detail) on refusal
    api.lease(headers, body, now); api.submit(headers, body, now); api.model("latest", None)
    api.reveal(task_id, headers, body, now)      # an audited task's error-feedback residuals
    api.verifiers.claim(headers, body, now)      # designated verifier nodes (verifier_api.py)

app.py maps these to routes; every refusal is an ApiError whose status follows docs/PROTOCOL.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load as st_load

from trainnet.config import defence_report
from trainnet.coordinator.audits import CHAIN_BAN_REASON, TASK_ID_RE, commitments, parse_residuals
from trainnet.coordinator.core import REJECT_BANNED, REJECT_UNKNOWN_NODE
from trainnet.coordinator.limits import ApiError, RateLimiter, check_info, parse_json_object
from trainnet.coordinator.service import CoordinatorService
from trainnet.coordinator.state import abandon_lease
from trainnet.coordinator.verifier_api import VerifierApi
from trainnet.protocol.auth import (
    HDR_NODE,
    HDR_UPDATE_SIG,
    load_public_key,
    node_id_of,
    verify_request,
    verify_update,
)
from trainnet.protocol.ids import is_id
from trainnet.protocol.messages import (
    Heartbeat,
    LeaseRequest,
    NoTask,
    Register,
    SubmitReply,
    UpdateSubmission,
)
from trainnet.protocol.wire import WireFormatError, decode_update, encode_update
from trainnet.verify import reputation

# 1.1: residual commitments (ef_in/ef_out), audit replies, POST /v1/audit/{task}/residuals;
# 1.2: designated verifier nodes (POST /v1/audit/claim, GET .../material, POST .../verdict; verifier_api.py)
PROTOCOL = "1.2"
# Core reject reasons -> HTTP status (docs/PROTOCOL.md, "HTTP API").
REASON_STATUS = {
    "unknown_node": 404, "banned": 403, "unknown_task": 409, "task_not_held": 409,
    "base_version_mismatch": 409, "too_stale": 409, "run_done": 409, "replay": 409,
    "bad_shape": 422, "non_finite": 422, "token_count_mismatch": 422, "key_mismatch": 403,
}


def _hget(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name) or headers.get(name.lower())


class Api:
    def __init__(self, svc: CoordinatorService, join_token: str | None = None,
                 allow_keys: set[str] | None = None) -> None:
        self.svc = svc
        self.join_token = join_token
        self.allow_keys = allow_keys
        lim = svc.limits
        self.rate = RateLimiter(lim.rate_per_s, lim.burst)
        self._run_db: Any = None  # a second SQLite connection for the dashboard's reads
        self.verifiers = VerifierApi(self)

    # ------------------------------------------------------------------ helpers
    def limit(self, key: str, now: float) -> None:
        wait = self.rate.take(key, now)
        if wait > 0:
            raise ApiError(429, "rate_limited", "too many requests", headers={"Retry-After": str(math.ceil(wait))})

    def _authenticate(self, headers: Mapping[str, str], path: str, body: bytes, now: float,
                      method: str = "POST") -> tuple[str, str]:
        """Check the request signature of a registered node; returns (node_id, public_key_hex)."""
        node_id = _hget(headers, HDR_NODE)
        if not node_id or len(node_id) > 64:
            raise ApiError(401, "bad_signature", f"missing {HDR_NODE} header")
        with self.svc.lock:
            node = self.svc.coord.nodes.get(node_id)
            pub = node.public_key if node else None
        if pub is None:
            raise ApiError(404, REJECT_UNKNOWN_NODE, "register first")
        err = verify_request(pub, headers, method, path, body, now, self.svc.limits.max_skew_s)
        if err:
            raise ApiError(401, err, "request signature check failed")
        self.limit("node:" + node_id, now)
        return node_id, pub

    # ------------------------------------------------------------------ endpoints
    def info(self) -> dict[str, Any]:
        svc, lim = self.svc, self.svc.limits
        man = svc.corpus.manifest
        return {
            "protocol": PROTOCOL, "run_id": svc.ccfg.run_id, "model": dataclasses.asdict(svc.cfg.model),
            "manifest_root": man.root_hash, "codec": svc.codec,
            "limits": {"max_update_bytes": lim.max_update_bytes, "max_json_bytes": lim.max_json_bytes,
                       "rate_per_s": lim.rate_per_s, "burst": lim.burst, "max_skew_s": lim.max_skew_s,
                       "max_leases_per_node": svc.ccfg.max_leases_per_node, "lease_s": svc.ccfg.lease_s,
                       "keep_versions": lim.keep_versions},
            "data": {"source": man.source, "shards": len(man.shards), "train_shards": len(man.ids("train"))},
        }

    def register(self, headers: Mapping[str, str], body: bytes, now: float) -> dict[str, Any]:
        lim = self.svc.limits
        d = parse_json_object(body, {"public_key": str}, {"join_token": str, "info": dict}, lim.max_string)
        pub = d["public_key"]
        if load_public_key(pub) is None or len(pub) != 64:
            raise ApiError(400, "bad_request", "public_key must be 64 hex digits (raw ed25519 key)")
        node_id = node_id_of(bytes.fromhex(pub))
        claimed = _hget(headers, HDR_NODE)
        if claimed is not None and claimed != node_id:
            raise ApiError(401, "key_mismatch", "node id header does not match the public key")
        err = verify_request(pub, headers, "POST", "/v1/register", body, now, lim.max_skew_s)
        if err:
            raise ApiError(401, err, "request signature check failed")
        self.limit("node:" + node_id, now)
        if self.join_token and not hmac.compare_digest((d.get("join_token") or "").encode(),
                                                       self.join_token.encode()):
            raise ApiError(403, "bad_join_token", "join token missing or wrong")
        listed = self.allow_keys is None or pub.lower() in self.allow_keys or node_id in self.allow_keys
        if not listed and not self.verifiers.is_verifier(pub, node_id):  # designated verifiers may join
            raise ApiError(403, "not_allowed", "this key is not on the allow-list")
        info = check_info(d.get("info"), lim)
        reply = self.svc.locked_step(lambda: self.svc.coord.register(Register(node_id, pub, info), now), now)
        if not reply.ok:
            raise ApiError(REASON_STATUS.get(reply.reason, 403), reply.reason, "registration refused")
        return {"node_id": node_id, "run_id": reply.run_id}

    def lease(self, headers: Mapping[str, str], body: bytes, now: float) -> dict[str, Any]:
        node_id, _ = self._authenticate(headers, "/v1/lease", body, now)
        parse_json_object(body, {})
        svc = self.svc
        with svc.lock:  # fast path: a refusal only touches last_seen, which need not be durable
            node = svc.coord.nodes[node_id]
            if node.banned:
                return {"task": None, "reason": REJECT_BANNED, "retry_after_s": None}
        r = svc.locked_step(lambda: svc.coord.lease(LeaseRequest(node_id), now), now,
                            persist=lambda res: not isinstance(res, NoTask))
        with svc.lock:  # audited tasks of this node still waiting for its residuals (lost replies)
            due = svc.audits.reveals_due(node_id)
        extra = {"reveals_due": due} if due else {}
        if isinstance(r, NoTask):
            retry = None if math.isinf(r.retry_after_s) else float(r.retry_after_s)
            return {"task": None, "reason": r.reason, "retry_after_s": retry, **extra}
        return {"task": r.to_dict(), **extra}

    def heartbeat(self, headers: Mapping[str, str], body: bytes, now: float) -> dict[str, Any]:
        node_id, _ = self._authenticate(headers, "/v1/heartbeat", body, now)
        d = parse_json_object(body, {"task_id": str}, max_string=self.svc.limits.max_string)
        svc = self.svc
        if svc.coord.nodes[node_id].banned:
            raise ApiError(403, REJECT_BANNED, "node is banned")
        r = svc.locked_step(lambda: svc.coord.heartbeat(Heartbeat(node_id, d["task_id"]), now), now)
        if not r.ok:
            raise ApiError(REASON_STATUS.get(r.reason, 409), r.reason, "heartbeat refused")
        return {"ok": True, "deadline": r.deadline}

    def abandon(self, headers: Mapping[str, str], body: bytes, now: float) -> dict[str, Any]:
        node_id, _ = self._authenticate(headers, "/v1/abandon", body, now)
        d = parse_json_object(body, {"task_id": str}, max_string=self.svc.limits.max_string)
        svc = self.svc
        reason = svc.locked_step(lambda: abandon_lease(svc.coord, node_id, d["task_id"], now), now)
        if reason:
            raise ApiError(REASON_STATUS.get(reason, 409), reason, "abandon refused")
        return {"ok": True}

    def submit(self, headers: Mapping[str, str], body: bytes, now: float) -> dict[str, Any]:
        svc = self.svc
        node_id, pub = self._authenticate(headers, "/v1/update", body, now)
        with svc.lock:  # a banned key is refused before anything else (also before the replay check)
            if svc.coord.nodes[node_id].banned:
                raise ApiError(403, REJECT_BANNED, f"node is banned: {svc.coord.nodes[node_id].ban_reason}",
                               extra={"accepted": False, "reason": REJECT_BANNED, "version": svc.coord.version,
                                      "staleness": 0})
        sig = _hget(headers, HDR_UPDATE_SIG)
        if not sig:
            raise ApiError(401, "bad_signature", f"missing {HDR_UPDATE_SIG} header")
        try:
            upd = decode_update(body, limits=svc.wire_limits)
        except WireFormatError as exc:
            raise ApiError(422, "bad_payload", str(exc)[:300]) from None
        h = upd.header
        if not is_id(h.task_id):
            raise ApiError(422, "bad_payload", "update header task_id must be 1-64 characters of A-Z a-z 0-9 _ -")
        digest = hashlib.sha256(body).hexdigest()
        if not verify_update(pub, sig, h.run_id, h.node_id, h.task_id, h.base_version, digest):
            raise ApiError(401, "bad_signature", "update signature does not match the payload")
        if h.run_id != svc.ccfg.run_id or h.node_id != node_id:
            raise ApiError(422, "bad_payload", "run_id or node_id in the update header is wrong")
        lease = svc.coord.leases.get(h.task_id)
        expected = lease.spec.codec if lease is not None and lease.spec.codec else svc.codec
        if h.codec != expected:
            raise ApiError(422, "bad_payload", f"codec {h.codec!r}; this task uses {expected!r}")
        tokens, steps, loss = _extra(h.extra)
        energy = _energy(h.extra)
        ef = commitments(h.extra, required=svc.audits.enforce)
        svc.count_bytes("update_in", len(body))
        # The wire bytes are made durable before taking the lock (overlapping fsyncs); unique name,
        # so a replay never touches stored evidence; deleted again if the core refuses the update.
        path = svc.store.write_blob(svc.store.new_update_path(), body)
        svc.crash_point("update_file_written")
        msg = UpdateSubmission(node_id, h.task_id, h.base_version, upd.tensors, tokens, steps,
                               loss if loss is not None else float("nan"), wire_bytes=len(body))
        row = {"task_id": h.task_id, "node_id": node_id, "base_version": h.base_version, "tokens": tokens,
               "steps": steps, "loss": loss, "arrived": now, "signature": sig, "payload_sha256": digest,
               "nbytes": len(body), "path": path, "energy": energy}
        audit: dict[str, Any] = {"reveal": False}
        try:
            with svc.lock:
                if svc.store.has_update(h.task_id):
                    reply = None
                    audit = svc.audits.reveal_info(node_id, h.task_id)
                else:
                    def step():
                        nonlocal audit
                        # The chain is checked after the replay check: a replay repeats an old ef_in.
                        if svc.audits.chain_break(svc.coord, node_id, h.task_id, ef, now, digest):
                            return SubmitReply(False, REJECT_BANNED, svc.coord.version)
                        r = svc.coord.submit(msg, now)
                        row["staleness"] = r.staleness
                        if r.accepted:
                            audit = svc.audits.accepted(svc.coord, node_id, h.task_id, ef, path, now)
                        return r
                    reply = _submit_locked(svc, step, now, row)
        except BaseException:
            svc.store.delete_blob(path)
            raise
        if reply is None:
            svc.store.delete_blob(path)
            raise ApiError(409, "replay", "this task's update was already accepted",
                           extra={"accepted": False, "reason": "replay", "version": svc.coord.version,
                                  "staleness": 0, "audit": audit})
        if reply.accepted:
            svc.crash_point("update_committed")
        out = {"accepted": reply.accepted, "reason": reply.reason, "version": reply.version,
               "staleness": reply.staleness}
        if not reply.accepted:
            svc.store.delete_blob(path)
            detail = CHAIN_BAN_REASON if svc.coord.nodes[node_id].ban_reason == CHAIN_BAN_REASON \
                and reply.reason == REJECT_BANNED else "update refused"
            raise ApiError(REASON_STATUS.get(reply.reason, 409), reply.reason, detail, extra=out)
        return out | {"audit": audit}

    def reveal_limit(self) -> int:
        """Largest reveal body: r_in and r_out of every parameter in float32, plus the header."""
        return 8 * self.svc.coord.num_params + (1 << 20)

    def reveal(self, task_id: str, headers: Mapping[str, str], body: bytes, now: float) -> dict[str, Any]:
        """POST /v1/audit/{task_id}/residuals: the worker reveals r_in and r_out of an audited task."""
        svc = self.svc
        if not TASK_ID_RE.match(task_id):
            raise ApiError(404, "unknown_audit", "no such task")
        node_id, _ = self._authenticate(headers, f"/v1/audit/{task_id}/residuals", body, now)
        with svc.lock:
            p = svc.audits.check_reveal(svc.coord, node_id, task_id, now)
            if isinstance(p, ApiError):
                raise p
            ef_in, ef_out = p.ef_in, p.ef_out
        parse_residuals(body, svc.coord.template, ef_in, ef_out)  # off the lock; the template never changes
        path = svc.store.write_blob(f"audits/{secrets.token_hex(16)}.safetensors", body)
        try:
            err = svc.locked_step(lambda: svc.audits.revealed(svc.coord, node_id, task_id, path, now), now,
                                  persist=lambda e: e is None)
        except BaseException:
            svc.store.delete_blob(path)
            raise
        if err is not None:  # another reveal or a verdict got there first
            svc.store.delete_blob(path)
            raise err
        return {"ok": True, "task_id": task_id}

    def model(self, version: str, since: str | None) -> tuple[bytes, int]:
        svc = self.svc
        with svc.lock:
            v = svc.coord.version if version == "latest" else _nonneg_int(version, "version")
            path = svc.store.version_path(v)
            base_path = svc.store.version_path(_nonneg_int(since, "since")) if since is not None else None
        if path is None or (since is not None and base_path is None):
            raise ApiError(404, "not_found", "model version not kept")
        try:
            data = svc.store.read_blob(path)
            if base_path is None:
                svc.count_bytes("model_full", len(data))
                return data, v
            new, base = st_load(data), st_load(svc.store.read_blob(base_path))
        except FileNotFoundError:  # pruned between the lookup and the read
            raise ApiError(404, "not_found", "model version not kept") from None
        diff = {k: (new[k] - base[k]).to(torch.float32) for k in new}
        enc = encode_update(diff, codec="fp16", run_id=svc.ccfg.run_id, base_version=int(since),
                            extra={"version": v})
        svc.count_bytes("model_delta", len(enc))
        return enc, v

    def shard(self, shard_id: str) -> bytes:
        man = self.svc.corpus.manifest
        sid = _nonneg_int(shard_id, "shard_id", status=404)
        # Only training shards are served: handing out the held-out split would let workers train on it.
        if sid >= len(man.shards) or man.entry(sid).split != "train":
            raise ApiError(404, "not_found", "no such training shard")
        data = self.svc.corpus.shard(sid).data
        self.svc.count_bytes("shard", len(data))
        return data

    def dashboard(self, now: float) -> dict[str, Any]:
        """Everything the dashboard page shows (docs/OBSERVABILITY.md); read-only, off the core's lock
        except for a short snapshot of its in-memory state."""
        from trainnet.dashboard.data import live_snapshot, run_view

        return run_view(self.run_db(), now, live_snapshot(self.svc))

    def run_db(self) -> Any:
        from trainnet.dashboard.data import RunDB

        if self._run_db is None:
            self._run_db = RunDB(self.svc.store.dir)
        return self._run_db

    def status(self) -> dict[str, Any]:
        svc = self.svc
        with svc.lock:
            out = svc.coord.status()
            out["node_table"] = [node_row(n) for n in svc.coord.nodes.values()]
            out["verification"] = svc.audits.summary(svc.coord) | {
                "verify_rate": svc.ccfg.verify_rate, "verifiers": svc.limits.verifiers,
                "audits_claimed": sum(1 for t, (_, d) in svc.audits.claims.items()
                                      if t in svc.coord.audits and d >= time.time()),
                "coordinator_steps": svc.auditor.steps_here}
            out["store"] = svc.store.counts()
        out["defences"] = defence_report(svc.cfg)
        return out


EVIDENCE_SHOWN = 10  # the newest pieces of evidence per node in /v1/status (all of it is in the store)


def node_row(n: Any) -> dict[str, Any]:
    """One /v1/status node_table row: verify.reputation (tasks, accepted/rejected with reasons, audits,
    ban + reason + evidence, score) plus the short names the worker report reads."""
    rep = reputation(n)
    rep["evidence"] = rep["evidence"][-EVIDENCE_SHOWN:]
    return rep | {"tokens": n.tokens_accepted, "accepted": n.updates_accepted, "rejected": n.updates_rejected,
                  "last_seen": n.last_seen}


def _submit_locked(svc: CoordinatorService, step, now: float, row: dict[str, Any]):
    """Core submit + durable commit while the caller holds svc.lock; reload the core on failure."""
    try:
        reply = step()
        svc._persist(now, row if reply.accepted else None)
        return reply
    except BaseException:
        svc._load()
        raise


def _nonneg_int(text: str | None, what: str, status: int = 400) -> int:
    if text is None or not text.isdigit() or len(text) > 12:
        raise ApiError(status, "bad_request" if status == 400 else "not_found", f"{what} must be an integer >= 0")
    return int(text)


def _extra(extra: dict[str, Any]) -> tuple[int, int, float | None]:
    def int_field(name: str) -> int:
        v = extra.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 1 << 50:
            raise ApiError(422, "bad_payload", f"update header extra.{name} must be a non-negative integer")
        return v
    loss = extra.get("loss")
    if loss is not None and (isinstance(loss, bool) or not isinstance(loss, int | float) or not math.isfinite(loss)):
        raise ApiError(422, "bad_payload", "update header extra.loss must be a finite number")
    return int_field("tokens"), int_field("steps"), None if loss is None else float(loss)


ENERGY_MAX_J = 1e10  # per task: ~2.8 MWh, far above any single machine's task; bigger is a lie or a bug
TASK_MAX_S = 1e7


def _energy(extra: dict[str, Any]) -> dict[str, Any] | None:
    """Optional energy report of the task (worker-measured or estimated): all four fields or none."""
    keys = ("energy_j", "energy_measured", "energy_source", "task_s")
    if not any(k in extra for k in keys):
        return None

    def num(name: str, hi: float) -> float:
        v = extra.get(name)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= hi:
            raise ApiError(422, "bad_payload", f"update header extra.{name} must be a finite number in [0, {hi:g}]")
        return float(v)

    measured, source = extra.get("energy_measured"), extra.get("energy_source")
    if not isinstance(measured, bool):
        raise ApiError(422, "bad_payload", "update header extra.energy_measured must be a boolean")
    if not isinstance(source, str) or not 0 < len(source) <= 200 or not source.isprintable():
        raise ApiError(422, "bad_payload", "update header extra.energy_source must be 1-200 printable characters")
    if not measured and not source.startswith("estimate"):
        raise ApiError(422, "bad_payload", "an energy estimate's source must start with 'estimate'")
    return {"joules": num("energy_j", ENERGY_MAX_J), "measured": measured, "source": source,
            "task_s": num("task_s", TASK_MAX_S)}
