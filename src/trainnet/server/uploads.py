"""Update ingest: cheap checks before any byte is read, the bytes into the BlobStore, metadata into the engine.

    ticket = uploads.begin(caller, task_id, content_length, now)    # lease, codec, byte cap: before the body
    size, sha = blobs.put_stream(ticket.key, body_chunks, ticket.max_bytes)    # the shell streams the body
    reply = uploads.finish(caller, ticket, size, sha, update_signature, now)   # header checked, then accepted
    reply = uploads.commit(caller, task_id, metadata, update_signature, now)   # presigned PUT already done

Two ways in, one way to the engine: with the filesystem backend the worker POSTs the encoded update to the
coordinator, which streams it into the store under the lease's server-chosen key; with an object store the
worker PUTs it straight to a presigned URL and POSTs only signed metadata — the coordinator never holds the
bytes. Either way the engine gets an `UpdateSubmission` (key, size, sha256, header sha256, codec, counts,
residual commitments, energy) and the aggregators check the bytes against it when they read them.

Byte caps come from the run's model and codec: an update can be exactly as large as its codec makes the
model's tensors plus a bounded header; nothing larger is read.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Any

from trainnet.aggregate import keys
from trainnet.codec.spec import parse_codec
from trainnet.protocol.auth import verify_update
from trainnet.protocol.ids import is_id
from trainnet.protocol.messages import SubmitReply, UpdateSubmission
from trainnet.protocol.wire import PREFIX, WireFormatError, WireLimits, parse_header, parse_prefix
from trainnet.server.auth import Caller
from trainnet.server.limits import ApiError, parse_json_object
from trainnet.server.service import Service, Unavailable

DIGEST_CHARS = frozenset("0123456789abcdef")
# Core reject reasons -> HTTP status (docs/PROTOCOL.md, "HTTP API").
REASON_STATUS = {
    "unknown_node": 404, "banned": 403, "unknown_task": 409, "task_not_held": 409, "base_version_mismatch": 409,
    "too_stale": 409, "run_done": 409, "replay": 409, "bad_shape": 422, "non_finite": 422,
    "token_count_mismatch": 422, "key_mismatch": 403, "wrong_codec": 422, "bad_blob": 422,
}
ENERGY_MAX_J = 1e10  # per task: ~2.8 MWh, far above any single machine's task; bigger is a lie or a bug
TASK_MAX_S = 1e7
HEADER_BYTES_PER_TENSOR = 1024  # names, shapes and per-part hashes of one tensor in the JSON header


def _digest(v: Any, what: str, required: bool = True) -> str:
    if v in (None, "") and not required:
        return ""
    if not isinstance(v, str) or len(v) != 64 or not set(v) <= DIGEST_CHARS:
        raise ApiError(422, "bad_payload", f"{what} must be 64 lowercase hex digits")
    return v


def counts(extra: dict[str, Any]) -> tuple[int, int, float | None]:
    def int_field(name: str) -> int:
        v = extra.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 1 << 50:
            raise ApiError(422, "bad_payload", f"update extra.{name} must be a non-negative integer")
        return v
    loss = extra.get("loss")
    if loss is not None and (isinstance(loss, bool) or not isinstance(loss, int | float) or not math.isfinite(loss)):
        raise ApiError(422, "bad_payload", "update extra.loss must be a finite number")
    return int_field("tokens"), int_field("steps"), None if loss is None else float(loss)


def energy(extra: dict[str, Any]) -> dict[str, Any] | None:
    """Optional energy report of the task (worker-measured or estimated): all four fields or none."""
    names = ("energy_j", "energy_measured", "energy_source", "task_s")
    if not any(k in extra for k in names):
        return None

    def num(name: str, hi: float) -> float:
        v = extra.get(name)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= hi:
            raise ApiError(422, "bad_payload", f"update extra.{name} must be a finite number in [0, {hi:g}]")
        return float(v)

    measured, source = extra.get("energy_measured"), extra.get("energy_source")
    if not isinstance(measured, bool):
        raise ApiError(422, "bad_payload", "update extra.energy_measured must be a boolean")
    if not isinstance(source, str) or not 0 < len(source) <= 200 or not source.isprintable():
        raise ApiError(422, "bad_payload", "update extra.energy_source must be 1-200 printable characters")
    if not measured and not source.startswith("estimate"):
        raise ApiError(422, "bad_payload", "an energy estimate's source must start with 'estimate'")
    return {"joules": num("energy_j", ENERGY_MAX_J), "measured": measured, "source": source,
            "task_s": num("task_s", TASK_MAX_S)}


def commitments(extra: dict[str, Any], required: bool) -> tuple[str, str]:
    if not required and "ef_in" not in extra and "ef_out" not in extra:
        return "", ""
    why = "; this run verifies updates, so ef_in and ef_out are required" if required else ""
    try:
        return _digest(extra.get("ef_in"), "update extra.ef_in"), _digest(extra.get("ef_out"), "update extra.ef_out")
    except ApiError as exc:
        raise ApiError(422, "bad_payload", exc.detail + why) from None


# The signed metadata of a presigned upload (POST /v1/update/{id}/commit): what the worker's header carries
# (worker/session.py) plus the blob's size and hashes. Exactly these fields, with these JSON types.
COMMIT_REQUIRED: dict[str, type] = {"base_version": int, "sha256": str, "header_sha256": str, "nbytes": int,
                                    "codec": str, "tokens": int, "steps": int}
COMMIT_OPTIONAL: dict[str, type] = {"loss": float, "energy_j": float, "energy_measured": bool, "energy_source": str,
                                    "task_s": float, "ef_in": str, "ef_out": str}


def parse_commit(body: bytes) -> dict[str, Any]:
    """The commit body, strictly typed like every other JSON body (400 naming the field otherwise)."""
    return parse_json_object(body, COMMIT_REQUIRED, COMMIT_OPTIONAL)


@dataclass(frozen=True)
class Ticket:
    task_id: str
    key: str
    max_bytes: int
    codec: str
    base_version: int


class Uploads:
    def __init__(self, svc: Service) -> None:
        self.svc = svc
        layout = svc.spec.layout
        self.header_cap = min(1 << 20, 64 * 1024 + HEADER_BYTES_PER_TENSOR * len(layout.names))
        self.limits = WireLimits(max_total_bytes=svc.limits.max_update_bytes, max_header_bytes=self.header_cap,
                                 max_tensors=len(layout.names), max_elements_per_tensor=max(layout.numel, 1),
                                 max_total_elements=max(layout.numel, 1))

    def max_bytes(self, codec: str) -> int:
        """The largest valid update of this run in `codec`: the exact payload for the model plus the header cap."""
        c = parse_codec(codec)
        payload = sum(c.payload_bytes(self.svc.spec.layout.size(i)) for i in range(len(self.svc.spec.layout.names)))
        return min(self.svc.limits.max_update_bytes, PREFIX.size + self.header_cap + payload)

    # ------------------------------------------------------------------ before the body
    def begin(self, caller: Caller, task_id: str, content_length: int | None, now: float) -> Ticket:
        if not is_id(task_id):
            raise ApiError(404, "unknown_task", "task ids are 1-64 characters of A-Z a-z 0-9 _ -")
        svc = self.svc
        if svc.degraded is not None:  # the submit could not be stored: refuse before a byte of the body is read
            raise Unavailable(f"the state store refuses writes ({svc.degraded}); retry later")
        with svc.lock:
            core = svc.core
            node = core.nodes[caller.node_id]
            if node.banned:
                raise ApiError(403, "banned", f"node is banned: {node.ban_reason}",
                               extra={"accepted": False, "reason": "banned", "version": core.version})
            lease = core.leases.get(task_id)
            held = lease is not None and lease.spec.node_id == caller.node_id
            spec = lease.spec if held else None
            key = lease.upload_key if held else None
            done = core.done or core.closed
        if not held:
            self._refuse_unheld(caller, task_id, done)
        cap = self.max_bytes(spec.codec)
        if content_length is not None and content_length > cap:
            raise ApiError(413, "payload_too_large", f"an update of this run in {spec.codec} is at most {cap} bytes")
        return Ticket(task_id, key, cap, spec.codec, spec.base_version)

    def _refuse_unheld(self, caller: Caller, task_id: str, done: bool) -> None:
        prior = self.svc.state.log_get("updates", task_id)
        if prior is not None and prior.get("node_id") == caller.node_id:
            audit = self.svc.read(lambda c: c.audit_reply(caller.node_id, task_id))
            raise ApiError(409, "replay", "this task's update was already accepted",
                           extra={"accepted": False, "reason": "replay", "audit": audit,
                                  "version": self.svc.core.version})
        if done:
            raise ApiError(409, "run_done", "the run is done", extra={"accepted": False, "reason": "run_done"})
        raise ApiError(409, "unknown_task", "no lease of yours for this task (expired, answered or never leased)",
                       extra={"accepted": False, "reason": "unknown_task"})

    # ------------------------------------------------------------------ after the body (direct upload)
    def finish(self, caller: Caller, t: Ticket, size: int, sha256: str, update_sig: str | None,
               now: float) -> dict[str, Any]:
        """The body is stored under t.key (size, sha256 measured while streaming): check its header against
        the lease and the model, then submit."""
        if not hmac.compare_digest(sha256, caller.req.body_sha256):
            self.svc.blobs.delete(t.key)
            raise ApiError(400, "body_mismatch", "the body does not hash to the signed X-TrainNet-Body-SHA256")
        try:
            prefix = self.svc.blobs.get_range(t.key, 0, PREFIX.size)
            hlen = parse_prefix(prefix, size, self.limits)
            hbytes = self.svc.blobs.get_range(t.key, PREFIX.size, hlen)
            header, _ = parse_header(hbytes, self.limits)
            if size != PREFIX.size + hlen + header.payload_bytes:
                raise WireFormatError(f"message is {size} bytes, its header describes "
                                      f"{PREFIX.size + hlen + header.payload_bytes}")
        except WireFormatError as exc:
            self.svc.blobs.delete(t.key)
            raise ApiError(422, "bad_payload", str(exc)[:300]) from None
        h = header
        if h.run_id != self.svc.ccfg.run_id or h.node_id != caller.node_id or h.task_id != t.task_id:
            self.svc.blobs.delete(t.key)
            raise ApiError(422, "bad_payload", "run_id, node_id or task_id in the update header is wrong")
        if h.codec != t.codec:
            self.svc.blobs.delete(t.key)
            raise ApiError(422, "bad_payload", f"codec {h.codec!r}; this task uses {t.codec!r}")
        layout = self.svc.spec.layout
        shapes = {e.name: tuple(e.shape) for e in h.tensors}
        if shapes != dict(zip(layout.names, layout.shapes, strict=True)):
            self.svc.blobs.delete(t.key)
            raise ApiError(422, "bad_shape", "the update's tensors or shapes do not match the run's model")
        meta = {"base_version": h.base_version, "sha256": sha256, "nbytes": size,
                "header_sha256": hashlib.sha256(prefix + hbytes).hexdigest(), "codec": h.codec, **h.extra}
        try:
            return self._submit(caller, t.task_id, meta, update_sig, now, key=t.key)
        except ApiError:
            self.svc.blobs.delete(t.key)
            raise
        except Unavailable:
            if self.svc.degraded is not None:  # the commit failed: nothing refers to the bytes
                self.svc.blobs.delete(t.key)
            raise

    # ------------------------------------------------------------------ presigned upload
    def commit(self, caller: Caller, task_id: str, meta: dict[str, Any], update_sig: str | None,
               now: float) -> dict[str, Any]:
        """The worker PUT the update to the presigned URL; `meta` is what it signed about it."""
        t = self.begin(caller, task_id, None, now)
        nbytes = meta.get("nbytes")
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or not 0 < nbytes <= t.max_bytes:
            raise ApiError(422, "bad_payload", f"nbytes must be an integer in [1, {t.max_bytes}]")
        stored = self.svc.blobs.size(t.key)
        if stored is None:
            raise ApiError(409, "blob_missing", "no upload at this task's key yet (PUT it to the presigned URL)")
        if stored != nbytes:
            raise ApiError(422, "bad_blob", f"the stored upload is {stored} bytes, the metadata says {nbytes}")
        # The stored bytes move to a key only the coordinator can write, so the worker cannot swap them later.
        final = keys.accepted(t.key)
        self.svc.blobs.copy(t.key, final)
        self.svc.blobs.delete(t.key)
        try:
            return self._submit(caller, task_id, meta, update_sig, now, key=final)
        except ApiError:
            self.svc.blobs.delete(final)
            raise

    # ------------------------------------------------------------------ both
    def _submit(self, caller: Caller, task_id: str, meta: dict[str, Any], update_sig: str | None, now: float,
                key: str) -> dict[str, Any]:
        svc = self.svc
        sha = _digest(meta.get("sha256"), "sha256")
        hsha = _digest(meta.get("header_sha256"), "header_sha256")
        base = meta.get("base_version")
        if not isinstance(base, int) or isinstance(base, bool) or base < 0:
            raise ApiError(422, "bad_payload", "base_version must be a non-negative integer")
        if not update_sig or not verify_update(caller.public_key, update_sig, svc.ccfg.run_id, caller.node_id,
                                               task_id, base, sha, hsha):
            raise ApiError(401, "bad_signature", "the update signature does not match the update (X-TrainNet-"
                                                 "Update-Signature over run, node, task, base, sha256, header)")
        tokens, steps, loss = counts(meta)
        e = energy(meta)
        ef_in, ef_out = commitments(meta, required=svc.ccfg.verify_rate > 0)
        codec = meta.get("codec")
        if not isinstance(codec, str) or len(codec) > 128:
            raise ApiError(422, "bad_payload", "codec must be a codec spec string")
        msg = UpdateSubmission(caller.node_id, task_id, base, tokens, steps, key, sha, int(meta["nbytes"]), codec,
                               ef_in, ef_out, loss, e, update_sig, hsha)
        reply: SubmitReply = svc.step(lambda core: core.submit(msg, now))
        out = {"accepted": reply.accepted, "reason": reply.reason, "version": reply.version,
               "staleness": reply.staleness}
        if not reply.accepted:
            raise ApiError(REASON_STATUS.get(reply.reason, 409), reply.reason, "update refused", extra=out)
        return out | {"audit": reply.audit}
