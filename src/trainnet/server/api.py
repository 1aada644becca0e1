"""The HTTP API's operations as plain functions over a Service (no web framework here): the HTTP shell (app.py)
maps routes to these, and the simulator calls them directly with real signed requests on a virtual clock.

    api = Api(svc)
    caller = api.auth.caller(headers, "POST", "/v1/lease", now); api.auth.check_body(caller, body)
    api.lease(caller, body, now)                     # {"task": {...}, "upload": {...}} or {"task": None, ...}
    api.register(headers, body, client_ip, now)      # self-signed with the new key (+ join token, proof of work)
    api.uploads.begin / finish / commit              # update ingest (uploads.py)
    api.audits.reveal / claim / material / verdict   # verification (audit_api.py)
    api.version("latest"), api.blob(key), api.shard(id), api.status(), api.operator_status()

Every refusal is an ApiError(status, code, detail) whose status follows docs/PROTOCOL.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
from collections.abc import Mapping
from typing import Any

from trainnet.aggregate import keys
from trainnet.config import defence_report
from trainnet.core.records import JoinToken
from trainnet.protocol.auth import load_public_key, node_id_of, pow_ok, verify_request
from trainnet.protocol.ids import is_id
from trainnet.protocol.messages import Heartbeat, LeaseRequest, NoTask, Register
from trainnet.server.audit_api import AuditApi
from trainnet.server.auth import Authenticator, Caller
from trainnet.server.limits import ApiError, check_info, parse_json_object
from trainnet.server.service import Service
from trainnet.server.uploads import Uploads
from trainnet.store.blobs import BadKey, BlobNotFound, check_key
from trainnet.verify.policy import reputation

# 2.0: the control plane / data plane split: run-bound single-use request signatures (body hash in a header),
# updates by blob key (direct or presigned PUT), versions as signed manifests of published deltas and chunks,
# progress in heartbeats, join tokens with key quotas, public vs operator status.
PROTOCOL = "2.0"
SHARED_TOKEN = "shared"
log = logging.getLogger("trainnet.coordinator")
PUBLIC_BLOB_PREFIXES = ("pub/", "versions/")
PROGRESS_KEYS = {"steps_done": int, "steps": int, "tokens_done": int, "eta_s": float, "loss": float}


class Api:
    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.auth = Authenticator(svc)
        self.uploads = Uploads(svc)
        self.audits = AuditApi(svc)
        self.operator_token = svc.limits.operator_token or self._operator_token()
        if svc.limits.join_token:
            self._ensure_shared_token(svc.limits.join_token, svc.limits.join_token_max_keys)

    def _operator_token(self) -> str:
        tok = self.svc.state.get_meta("operator_token")
        if not isinstance(tok, str):
            tok = secrets.token_urlsafe(18)
            self.svc.state.set_meta("operator_token", tok)
        return tok

    def _ensure_shared_token(self, secret: str, max_keys: int) -> None:
        sha = hashlib.sha256(secret.encode()).hexdigest()

        def ensure(core: Any) -> None:
            tok = core.tokens.get(SHARED_TOKEN)
            if tok is None or tok.sha256 != sha or tok.max_keys != max_keys or not tok.shared:
                keys_ = tok.keys if tok is not None and tok.sha256 == sha else []
                core.add_token(JoinToken(SHARED_TOKEN, sha, max_keys, list(keys_), label="--join-token", shared=True))
        self.svc.step(ensure)

    # ------------------------------------------------------------------ operator
    def is_operator(self, headers: Mapping[str, str], query_token: str | None = None) -> bool:
        auth = headers.get("authorization") or headers.get("Authorization") or ""
        given = auth[7:] if auth.lower().startswith("bearer ") else (query_token or "")
        return bool(given) and hmac.compare_digest(given.encode(), self.operator_token.encode())

    def require_operator(self, headers: Mapping[str, str], query_token: str | None = None) -> None:
        if not self.is_operator(headers, query_token):
            raise ApiError(401, "operator_only", "this view needs the operator token (Authorization: Bearer ...)")

    def issue_token(self, max_keys: int, label: str = "") -> dict[str, Any]:
        """A per-participant join token: the secret (shown once) and its id."""
        if not 1 <= max_keys <= 1_000_000:
            raise ApiError(400, "bad_request", "max_keys must be in [1, 1000000]")
        secret = secrets.token_urlsafe(24)
        token_id = "k" + hashlib.sha256(secret.encode()).hexdigest()[:15]
        tok = JoinToken(token_id, hashlib.sha256(secret.encode()).hexdigest(), max_keys, label=label[:64])
        self.svc.step(lambda c: c.add_token(tok))
        return {"token": f"{token_id}.{secret}", "token_id": token_id, "max_keys": max_keys}

    def _token(self, text: str | None) -> str:
        """The token id a join token string names ("" when the run needs none); ApiError when wrong."""
        with self.svc.lock:
            needed = bool(self.svc.core.tokens)
            shared = self.svc.core.tokens.get(SHARED_TOKEN)
        if not needed:
            return ""
        if not text:
            raise ApiError(403, "bad_join_token", "this run needs a join token")
        if "." in text:
            token_id, _, secret = text.partition(".")
        else:
            token_id, secret = SHARED_TOKEN, text
        with self.svc.lock:
            tok = self.svc.core.tokens.get(token_id) or shared
        if tok is None or not hmac.compare_digest(hashlib.sha256(secret.encode()).hexdigest(), tok.sha256):
            raise ApiError(403, "bad_join_token", "join token missing or wrong")
        return tok.token_id

    # ------------------------------------------------------------------ registration
    def register(self, headers: Mapping[str, str], body: bytes, client: str, now: float) -> dict[str, Any]:
        svc, lim = self.svc, self.svc.limits
        d = parse_json_object(body, {"public_key": str}, {"join_token": str, "info": dict, "pow": str},
                              lim.max_string)
        pub = d["public_key"]
        if len(pub) != 64 or load_public_key(pub) is None:
            raise ApiError(400, "bad_request", "public_key must be 64 hex digits (raw ed25519 key)")
        node_id = node_id_of(bytes.fromhex(pub))
        err, req = verify_request(pub, headers, svc.ccfg.run_id, "POST", "/v1/register", now, lim.max_skew_s)
        if err or req is None or req.node_id != node_id:
            raise ApiError(401, err or "bad_signature", "registration must be signed by the key it registers")
        if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), req.body_sha256):
            raise ApiError(400, "body_mismatch", "the body does not hash to the signed X-TrainNet-Body-SHA256")
        with svc.lock:
            known = svc.core.nodes.get(node_id)
        if known is None:  # a new identity costs: a per-address budget, a token quota, optionally work
            self.auth.registration(client, now)
            if not pow_ok(svc.ccfg.run_id, pub, d.get("pow") or "", lim.register_pow_bits):
                raise ApiError(403, "proof_of_work", f"registration needs a proof of work of {lim.register_pow_bits} "
                                                     "bits (see docs/PROTOCOL.md)",
                               extra={"pow_bits": lim.register_pow_bits})
            token_id = self._token(d.get("join_token"))
            if self.svc.limits.verifiers == "nodes" and self.audits.is_verifier(pub, node_id):
                token_id = ""  # designated verifiers are on an allow-list of their own
        else:
            token_id = known.token_id
        info = check_info(d.get("info"), lim)
        reply = svc.step(lambda c: c.register(Register(node_id, pub, info, token_id), now))
        if not reply.ok:
            status = {"banned": 403, "key_mismatch": 403, "bad_join_token": 403, "token_revoked": 403,
                      "token_quota": 403}.get(reply.reason, 403)
            raise ApiError(status, reply.reason, "registration refused")
        with svc.lock:
            floor = svc.core.nodes[node_id].counter
        return {"node_id": node_id, "run_id": reply.run_id, "min_counter": floor + 1}

    # ------------------------------------------------------------------ leases
    def lease(self, caller: Caller, body: bytes, now: float) -> dict[str, Any]:
        parse_json_object(body, {})
        svc = self.svc
        if caller.banned:
            return {"task": None, "reason": "banned", "retry_after_s": None}

        def step(core: Any) -> tuple[Any, list[str], str | None]:
            r = core.lease(LeaseRequest(caller.node_id), now)
            key = core.leases[r.task_id].upload_key if not isinstance(r, NoTask) else None
            return r, core.reveals_due(caller.node_id), key
        r, due, key = svc.step(step)
        extra = {"reveals_due": due} if due else {}
        if isinstance(r, NoTask):
            retry = None if math.isinf(r.retry_after_s) else float(r.retry_after_s)
            return {"task": None, "reason": r.reason, "retry_after_s": retry, **extra}
        # No Content-Length in the signature: S3 signs an exact size, not a cap, and the update's size is not known
        # before training. The cap is enforced at commit (the stored object's size is read; a blob over the cap
        # or unlike the claimed size is deleted and refused). A PUT never committed stays in the bucket: an S3
        # lifecycle rule on the updates/ prefix removes it (docs/STORAGE.md).
        url = svc.blobs.presign_put(key, int(min(svc.limits.presign_s, max(60.0, r.deadline - now))))
        upload = {"method": "PUT", "url": url, "max_bytes": self.uploads.max_bytes(r.codec)} if url else \
            {"method": "POST", "url": f"/v1/update/{r.task_id}", "max_bytes": self.uploads.max_bytes(r.codec)}
        return {"task": r.to_dict(), "upload": upload, **extra}

    def heartbeat(self, caller: Caller, body: bytes, now: float) -> dict[str, Any]:
        d = parse_json_object(body, {"task_id": str}, {"progress": dict}, self.svc.limits.max_string)
        Authenticator.not_banned(caller)
        progress = _progress(d.get("progress"))
        r = self.svc.step(lambda c: c.heartbeat(Heartbeat(caller.node_id, d["task_id"], progress), now))
        if not r.ok:
            raise ApiError({"unknown_node": 404, "banned": 403}.get(r.reason, 409), r.reason, "heartbeat refused")
        if progress and progress.get("steps"):
            self._log_progress(caller.node_id, d["task_id"], progress)
        return {"ok": True, "deadline": r.deadline}

    def _log_progress(self, node_id: str, task_id: str, p: dict[str, Any]) -> None:
        """One line per progress report, so a long task (the warm start above all) is visible in the log."""
        lease = self.svc.core.leases.get(task_id)
        if lease is None:
            return
        warm = lease.spec.codec == self.svc.ccfg.warm_start_codec and self.svc.ccfg.warm_start_tokens > 0 \
            and lease.spec.base_version == 0
        done, total = int(p.get("tokens_done", 0)), int(lease.spec.tokens)
        eta = p.get("eta_s")
        log.info("%s: node %s, %.0f%% (%s/%s tokens)%s", "warm start" if warm else f"task {task_id}", node_id,
                 100 * p["steps_done"] / p["steps"], f"{done / 1000:.0f}k", f"{total / 1000:.0f}k",
                 f", ETA {eta:.0f}s" if isinstance(eta, int | float) else "")

    def abandon(self, caller: Caller, body: bytes, now: float) -> dict[str, Any]:
        d = parse_json_object(body, {"task_id": str}, max_string=self.svc.limits.max_string)
        reason = self.svc.step(lambda c: c.abandon(caller.node_id, d["task_id"], now))
        if reason:
            raise ApiError({"unknown_node": 404}.get(reason, 409), reason, "abandon refused")
        return {"ok": True}

    # ------------------------------------------------------------------ downloads
    def info(self) -> dict[str, Any]:
        svc, lim = self.svc, self.svc.limits
        man = svc.spec.corpus.manifest
        return {
            "protocol": PROTOCOL, "run_id": svc.ccfg.run_id, "model": svc.spec.model_info(),
            "n_params": svc.spec.layout.numel,
            "manifest_root": man.root_hash, "codec": svc.ccfg.codec, "signer": self._signer(),
            "limits": {"max_update_bytes": self.uploads.max_bytes(svc.ccfg.codec), "max_json_bytes": lim.max_json_bytes,
                       "rate_per_s": lim.rate_per_s, "burst": lim.burst, "max_skew_s": lim.max_skew_s,
                       "max_leases_per_node": svc.ccfg.max_leases_per_node, "lease_s": svc.ccfg.lease_s,
                       "register_pow_bits": lim.register_pow_bits, "reveal_max_bytes": self.audits.reveal_cap},
            "data": {"source": man.source, "shards": len(man.shards), "train_shards": len(man.ids("train")),
                     **{k: v for k, v in svc.spec.data_info().items() if k in ("format", "dtype", "byteorder",
                                                                                "vocab_size", "tokenizer")}},
            "publish": {"codec": svc.ccfg.publish_codec, "full_every": svc.ccfg.full_every},
            "join_token_required": self.svc.read(lambda c: bool(c.tokens)),
        }

    def _signer(self) -> str:
        from trainnet.protocol.auth import public_key_hex

        return public_key_hex(self.svc.key)

    def version(self, which: str) -> dict[str, Any]:
        """A published version's signed manifest, with a URL for every blob it lists."""
        svc = self.svc
        with svc.lock:
            latest, published = svc.core.version, svc.core.published
        if not published:
            raise ApiError(404, "not_found", "no version is published yet")
        v = latest if which == "latest" else _nonneg_int(which, "version", 404)
        if v > latest:
            raise ApiError(404, "not_found", f"version {v} is not published (latest {latest})")
        try:
            doc = json.loads(svc.blobs.get(keys.manifest(v)))
        except BlobNotFound:
            raise ApiError(404, "not_found", f"version {v} is no longer kept") from None
        listed = [s["key"] for s in (doc.get("delta") or {}).get("shards", [])]
        listed += [c["key"] for c in (doc.get("full") or {}).get("chunks", [])]
        urls = {}
        for k in listed:
            urls[k] = svc.blobs.presign_get(k, int(svc.limits.presign_s)) or f"/v1/blob/{k}"
        return {"manifest": doc, "urls": urls, "latest": latest}

    def blob(self, key: str) -> Any:
        """A published blob (filesystem backend): its local path for zero-copy serving, or its bytes."""
        try:
            check_key(key)
        except BadKey:
            raise ApiError(404, "not_found", "no such blob") from None
        if not key.startswith(PUBLIC_BLOB_PREFIXES):
            raise ApiError(404, "not_found", "no such blob")
        size = self.svc.blobs.size(key)
        if size is None:
            raise ApiError(404, "not_found", "no such blob (pruned?)")
        kind = "model_full" if key.startswith("pub/chunks/") else "model_delta" if key.startswith("pub/") else "manifest"
        self.svc.count_bytes(kind, size)
        path = self.svc.blobs.local_path(key)
        return path if path is not None else self.svc.blobs.get(key)

    def shard(self, shard_id: str) -> bytes:
        man = self.svc.spec.corpus.manifest
        sid = _nonneg_int(shard_id, "shard_id", status=404)
        # Only training shards are served: handing out the held-out split would let workers train on it.
        if sid >= len(man.shards) or man.entry(sid).split != "train":
            raise ApiError(404, "not_found", "no such training shard")
        data = self.svc.spec.corpus.shard(sid).data
        self.svc.count_bytes("shard", len(data))
        return data

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """Public: aggregates only (no node ids, no evidence)."""
        svc = self.svc
        out = svc.read(lambda c: c.status())
        out["defences"] = defence_report(svc.spec.cfg)
        out["protocol"] = PROTOCOL
        out["degraded"] = svc.degraded
        out["verification"] = {"verify_rate": svc.ccfg.verify_rate, "verifiers": svc.limits.verifiers,
                               "verify_steps": out.get("verify_steps", 0)}
        return out

    def operator_status(self, limit: int = 1000) -> dict[str, Any]:
        """Operator only: per-node detail (reputation, evidence), join tokens and the data plane's state."""
        svc = self.svc

        def look(c: Any) -> dict[str, Any]:
            nodes = sorted(c.nodes.values(), key=lambda n: -n.tokens_accepted)[:limit]
            return {"node_table": [node_row(n) for n in nodes],
                    "tokens": [{"token_id": t.token_id, "max_keys": t.max_keys, "keys": len(t.keys),
                                "revoked": t.revoked, "label": t.label, "shared": t.shared}
                               for t in c.tokens.values()],
                    "jobs": [{"job_id": j.job_id, "kind": j.kind, "phase": j.phase, "updates": len(j.updates)}
                             for j in c.jobs.values()]}
        traffic = svc.state.traffic()
        for k, v in svc.traffic_pending().items():
            traffic[k] = traffic.get(k, 0) + v
        return self.status() | svc.read(look) | {"limits": svc.limits.to_dict(), "persistence": persistence(svc),
                                                 "traffic": traffic}


def persistence(svc: Service) -> dict[str, Any]:
    """Durable-step cost: the last (up to) 4,096 group commits of the state store."""
    ms, rows = list(svc.commit_ms), list(svc.commit_rows)
    if not ms:
        return {"commits": 0}
    s = sorted(ms)
    return {"commits": len(ms), "ms_p50": s[len(s) // 2], "ms_p99": s[min(len(s) - 1, int(0.99 * len(s)))],
            "ms_mean": sum(ms) / len(ms), "rows_per_commit": sum(rows) / len(rows), "store": svc.state.url}


EVIDENCE_SHOWN = 10


def node_row(n: Any) -> dict[str, Any]:
    rep = reputation(n)
    rep["evidence"] = rep["evidence"][-EVIDENCE_SHOWN:]
    return rep | {"tokens": n.tokens_accepted, "accepted": n.updates_accepted, "rejected": n.updates_rejected,
                  "last_seen": n.last_seen, "progress": n.progress, "device": str(n.info.get("device", ""))}


def _progress(p: Any) -> dict[str, Any] | None:
    if p is None:
        return None
    if not isinstance(p, dict) or set(p) - set(PROGRESS_KEYS):
        raise ApiError(400, "bad_request", f"progress may only have {sorted(PROGRESS_KEYS)}")
    out = {}
    for k, v in p.items():
        typ = PROGRESS_KEYS[k]
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1e15
        if not ok or (typ is int and not isinstance(v, int)):
            raise ApiError(400, "bad_request", f"progress.{k} must be a non-negative {typ.__name__}")
        out[k] = v
    return out


def _nonneg_int(text: str | None, what: str, status: int = 400) -> int:
    if text is None or not text.isdigit() or len(text) > 12:
        raise ApiError(status, "bad_request" if status == 400 else "not_found", f"{what} must be an integer >= 0")
    return int(text)


def valid_task_id(task_id: str) -> str:
    if not is_id(task_id):
        raise ApiError(404, "unknown_task", "task ids are 1-64 characters of A-Z a-z 0-9 _ -")
    return task_id
