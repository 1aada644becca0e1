"""The protocol engine, sans IO: messages and the clock in, replies, events and row changes out.

    core = Coordinator(CoordinatorConfig(tokens_target=2_000_000), manifest, num_params=1_234_567)
    core.register(Register("n0", public_key="ab.."), now=0.0)
    spec = core.lease(LeaseRequest("n0"), now=0.0)           # TaskSpec or NoTask; core.leases[id].upload_key
    reply = core.submit(UpdateSubmission(...), now=12.5)      # metadata only: the update is a blob
    core.tick(now=13.0)                                       # expiries, grace merges, reveal deadlines
    changes = core.take_changes()                             # row-level Changes for a StateStore
    sd = core.state_dict(); Coordinator.from_state(cfg, manifest, num_params, sd)   # one value, exactly

It never opens a socket or a file, never reads a clock, never draws randomness it was not given, and never
holds a model tensor: the control plane decides; the data plane (aggregate/) moves and reduces bytes. The
server and the simulator drive the same object through the same service layer (server/service.py).

Gradient consensus (docs/ALGORITHM.md): accepted updates wait in a buffer; when `quorum` of them are there
(the quorum grows with the swarm, see scaling.py) or the oldest has waited `grace_s`, the buffer becomes a
merge job (merging.py). Verification — the residual commitment chain, audit selection, reveals with
deadlines, verifier claims, verdicts, evidence and bans — is part of the engine (verification.py).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
from collections import deque
from typing import Any

from trainnet.aggregate import keys
from trainnet.consensus.plan import decomposable
from trainnet.core.changes import Tracker
from trainnet.core.merging import MergeMixin
from trainnet.core.records import (
    REJECT_BANNED,
    REJECT_BASE_MISMATCH,
    REJECT_BLOB,
    REJECT_CODEC,
    REJECT_DONE,
    REJECT_STALE,
    REJECT_TOKENS,
    REJECT_UNKNOWN_NODE,
    REJECT_UNKNOWN_TASK,
    REJECT_WRONG_NODE,
    AuditRecord,
    CoordinatorConfig,
    JoinToken,
    Lease,
    MergeJob,
    NodeRecord,
    Pending,
)
from trainnet.core.scaling import effective_quorum
from trainnet.core.verification import VerifyMixin
from trainnet.data.manifest import Manifest
from trainnet.protocol.messages import (
    Event,
    Heartbeat,
    HeartbeatReply,
    LeaseRequest,
    NoTask,
    Register,
    Registered,
    SubmitReply,
    TaskSpec,
    UpdateSubmission,
)
from trainnet.train.schedule import h_at

# The meta document: every scalar of the engine's state (collections are persisted row by row).
META_FIELDS = (
    "version", "published", "next_task", "task_counter", "job_counter", "tokens_accepted", "tokens_outstanding",
    "updates_accepted", "updates_rejected", "updates_merged", "updates_dropped", "outer_steps", "leases_expired",
    "audits_passed", "audits_failed", "nodes_banned", "nodes_registered", "reject_reasons", "done", "done_at",
    "quorum_eff", "active_nodes", "group_next", "energy_j", "energy_measured_j", "last_version_at", "closed",
    "verify_steps",
)
COLLECTIONS = ("nodes", "leases", "buffer", "audits", "chain", "jobs", "tokens")


def _is_sha256(h: object) -> bool:
    return isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)


class Coordinator(VerifyMixin, MergeMixin):
    def __init__(self, cfg: CoordinatorConfig, manifest: Manifest, num_params: int) -> None:
        if cfg.stale_mode not in ("damp", "endpoint"):
            raise ValueError(f"stale_mode must be 'damp' or 'endpoint' (got {cfg.stale_mode!r})")
        if num_params <= 0:
            raise ValueError("num_params must be positive")
        if cfg.shards > 1 and not decomposable(cfg.aggregator):
            # A dense rule (cclip, geomed, Krum family, bucketing) needs every update whole in one place; on N
            # shards each would run it on its own slice (a different rule, and shard-count dependent results).
            raise ValueError(f"aggregation rule {cfg.aggregator!r} needs the whole parameter vector in one place: "
                             f"it runs on 1 aggregator shard only (got shards={cfg.shards}); use a decomposable "
                             "rule (mean, median, trimmed_mean, with norm_clip) or shards=1")
        self.cfg = cfg
        self.manifest = manifest
        self.num_params = int(num_params)
        self.train_shards = manifest.ids("train")
        if not self.train_shards:
            raise ValueError("manifest has no training shards")
        self._changes = Tracker()
        # scalars (META_FIELDS)
        self.version = 0
        self.published = False  # version 0 exists once the init job has written it
        self.next_task = 0
        self.task_counter = 0
        self.job_counter = 0
        self.tokens_accepted = 0
        self.tokens_outstanding = 0
        self.updates_accepted = 0
        self.updates_rejected = 0
        self.updates_merged = 0
        self.updates_dropped = 0
        self.outer_steps = 0
        self.leases_expired = 0
        self.audits_passed = 0
        self.audits_failed = 0
        self.nodes_banned = 0
        self.nodes_registered = 0
        self.reject_reasons: dict[str, int] = {}
        self.done = False  # the final version is published
        self.closed = False  # the token budget is accepted: no more leases or uploads, merges are flushing
        self.done_at: float | None = None
        self.verify_steps = 0  # inner steps recomputed by verifiers, over the run
        self.quorum_eff = cfg.quorum
        self.active_nodes = 0
        self.group_next: dict[str, int] = {}
        self.energy_j = 0.0
        self.energy_measured_j = 0.0
        self.last_version_at: float | None = None
        self.requeue: deque[tuple[int, int]] = deque()  # persisted in meta as a list
        # collections
        self.nodes: dict[str, NodeRecord] = {}
        self.leases: dict[str, Lease] = {}
        self.buffer: dict[str, Pending] = {}  # task_id -> accepted update, in arrival order
        self.audits: dict[str, AuditRecord] = {}
        self.chain: dict[str, str] = {}  # node_id -> last accepted ef_out
        self.jobs: dict[str, MergeJob] = {}  # at most one merge job in flight
        self.tokens: dict[str, JoinToken] = {}
        # derived indices (rebuilt on load, never persisted): no request scans all nodes or leases
        self._node_leases: dict[str, set[str]] = {}
        self._deadlines: list[tuple[float, str]] = []  # lazy min-heap of (deadline, task_id)
        self._events: list[Event] = []

    # ------------------------------------------------------------------ construction
    @classmethod
    def fresh(cls, cfg: CoordinatorConfig, manifest: Manifest, num_params: int, now: float) -> Coordinator:
        """A new run: its first merge job writes version 0 (the initial model) through the data plane."""
        core = cls(cfg, manifest, num_params)
        core._start_init(now)
        core._changes.meta = True
        return core

    # ------------------------------------------------------------------ queries
    def progress(self) -> float:
        return (self.tokens_accepted + self.tokens_outstanding) / max(self.cfg.tokens_target, 1)

    def drain_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def status(self) -> dict[str, Any]:
        """Aggregate counters (O(1): nothing here scans nodes or leases)."""
        return {
            "run_id": self.cfg.run_id, "model_version": self.version, "published": self.published,
            "tokens": self.tokens_accepted, "tokens_target": self.cfg.tokens_target,
            "updates_accepted": self.updates_accepted, "updates_rejected": self.updates_rejected,
            "updates_merged": self.updates_merged, "updates_dropped": self.updates_dropped,
            "outer_steps": self.outer_steps, "leases_active": len(self.leases),
            "leases_expired": self.leases_expired, "buffered": len(self.buffer),
            "merging": sum(len(j.updates) for j in self.jobs.values()), "nodes": len(self.nodes),
            "nodes_active": self.active_nodes, "nodes_banned": self.nodes_banned, "quorum": self.quorum_eff,
            "reject_reasons": dict(self.reject_reasons), "audits_passed": self.audits_passed,
            "audits_failed": self.audits_failed, "audits_pending": len(self.audits), "done": self.done,
            "closed": self.closed, "done_at": self.done_at, "verify_steps": self.verify_steps,
        }

    # ------------------------------------------------------------------ registration and join tokens
    def add_token(self, token: JoinToken) -> None:
        self.tokens[token.token_id] = token
        self._changes.touch("tokens", token.token_id)

    def register(self, msg: Register, now: float) -> Registered:
        node = self.nodes.get(msg.node_id)
        if node is not None:
            if node.banned:
                return Registered(False, msg.node_id, self.cfg.run_id, REJECT_BANNED)
            if node.public_key and msg.public_key and node.public_key != msg.public_key:
                return Registered(False, msg.node_id, self.cfg.run_id, "key_mismatch")
            node.last_seen = now
            if msg.info:
                node.info = dict(msg.info)
            self._touch_node(node)
            return Registered(True, msg.node_id, self.cfg.run_id)
        if msg.token_id:
            tok = self.tokens.get(msg.token_id)
            if tok is None:
                return Registered(False, msg.node_id, self.cfg.run_id, "bad_join_token")
            if tok.revoked:
                return Registered(False, msg.node_id, self.cfg.run_id, "token_revoked")
            if len(tok.keys) >= tok.max_keys:
                return Registered(False, msg.node_id, self.cfg.run_id, "token_quota")
            tok.keys.append(msg.node_id)
            self._changes.touch("tokens", tok.token_id)
        node = NodeRecord(msg.node_id, msg.public_key, now, now, ordinal=self.nodes_registered,
                          token_id=msg.token_id, info=dict(msg.info))
        self.nodes[msg.node_id] = node
        self.nodes_registered += 1
        # nodes_registered is a meta field (the next node's ordinal): without this a registration committed
        # alone left the stored counter behind, and after a restart two nodes got the same ordinal.
        self._changes.meta = True
        self._touch_node(node)
        self._emit(now, "node_registered", node_id=msg.node_id)
        return Registered(True, msg.node_id, self.cfg.run_id)

    def seen(self, node_id: str, counter: int, now: float) -> None:
        """A signed request from `node_id` was verified: remember its counter (replays are refused by the shell
        against this) and when it was last seen. Persisted with the node's next changed row."""
        node = self.nodes.get(node_id)
        if node is not None:
            node.counter = max(node.counter, int(counter))
            node.last_seen = now

    # ------------------------------------------------------------------ leases
    def lease(self, msg: LeaseRequest, now: float) -> TaskSpec | NoTask:
        node = self.nodes.get(msg.node_id)
        if node is None:
            return NoTask("unknown_node")
        if node.banned:
            return NoTask("banned", retry_after_s=math.inf)
        node.last_seen = now
        if self.done or self.closed:
            return NoTask("done", retry_after_s=math.inf)
        if not self.published:
            return NoTask("starting", retry_after_s=1.0)
        if len(self._node_leases.get(msg.node_id, ())) >= self.cfg.max_leases_per_node:
            return NoTask("lease_limit")
        c = self.cfg
        if self.tokens_accepted + self.tokens_outstanding >= c.tokens_target:
            return NoTask("budget_reached")  # in-flight tasks may still expire and free budget
        warm = c.warm_start_tokens > 0 and self.version == 0
        if warm and (self.leases or self.buffer or self.jobs):
            return NoTask("warming_up", retry_after_s=min(10.0, c.lease_s / 10))
        shard_id, seed = self._next_shard(node)
        progress = self.progress()
        steps = h_at(progress, c.h, c.h_start, c.h_ramp)
        if warm:
            steps = max(1, round(c.warm_start_tokens / (c.batch_size * c.seq_len)))
        tokens = steps * c.batch_size * c.seq_len
        end = progress + tokens / max(c.tokens_target, 1)  # the task follows the run's lr schedule
        hparams = {"steps": steps, "lr": c.lr, "progress_start": progress, "progress_end": end,
                   "lr_warmup": c.lr_warmup, "min_lr_ratio": c.min_lr_ratio, "batch_size": c.batch_size,
                   "seq_len": c.seq_len, "weight_decay": c.weight_decay, "beta1": c.beta1, "beta2": c.beta2,
                   "grad_clip": c.grad_clip, "precision": c.precision}
        task_id = f"t{self.task_counter:07d}"
        self.task_counter += 1
        spec = TaskSpec(run_id=c.run_id, task_id=task_id, node_id=msg.node_id, base_version=self.version,
                        shard_id=shard_id, shard_sha256=self.manifest.entry(shard_id).sha256,
                        manifest_root=self.manifest.root_hash, seed=seed, hparams=hparams, tokens=tokens,
                        issued_at=now, deadline=now + self._lease_span(steps),
                        codec=c.warm_start_codec if warm else c.codec)
        self._add_lease(Lease(spec, spec.deadline, self.upload_key(task_id)))
        self.tokens_outstanding += tokens
        node.tasks_leased += 1
        node.progress = None
        self._touch_node(node)
        self._changes.meta = True
        return spec

    def upload_key(self, task_id: str) -> str:
        """The blob key a task's update goes to: chosen by the server, unguessable by other nodes (a keyed hash
        of the task id), the same on every retry of that task."""
        tag = hmac.new(self.cfg.audit_key.encode(), f"upload:{self.cfg.run_id}:{task_id}".encode(),
                       hashlib.sha256).hexdigest()[:24]
        return f"updates/{task_id.lower()}-{tag}.tnup"

    def heartbeat(self, msg: Heartbeat, now: float) -> HeartbeatReply:
        node = self.nodes.get(msg.node_id)
        if node is None:
            return HeartbeatReply(False, REJECT_UNKNOWN_NODE)
        node.last_seen = now
        if node.banned:
            return HeartbeatReply(False, REJECT_BANNED)
        lease = self.leases.get(msg.task_id)
        if lease is None:
            return HeartbeatReply(False, REJECT_UNKNOWN_TASK)
        if lease.spec.node_id != msg.node_id:
            return HeartbeatReply(False, REJECT_WRONG_NODE)
        lease.deadline = now + self._lease_span(lease.spec.hparams["steps"])
        heapq.heappush(self._deadlines, (lease.deadline, msg.task_id))
        if msg.progress is not None:
            lease.progress = dict(msg.progress) | {"time": now}
            node.progress = lease.progress | {"task_id": msg.task_id}
            self._emit(now, "task_progress", node_id=msg.node_id, task_id=msg.task_id, **msg.progress)
        self._changes.touch("leases", msg.task_id)
        self._touch_node(node)
        return HeartbeatReply(True, deadline=lease.deadline)

    def abandon(self, node_id: str, task_id: str, now: float) -> str:
        """A worker gives its lease back (e.g. on Ctrl-C): the shard goes to the front of the queue at once.
        Not counted as an expiry. Returns "" or a reject code."""
        node = self.nodes.get(node_id)
        if node is None:
            return REJECT_UNKNOWN_NODE
        node.last_seen = now
        lease = self.leases.get(task_id)
        if lease is None:
            return REJECT_UNKNOWN_TASK
        if lease.spec.node_id != node_id:
            return REJECT_WRONG_NODE
        self._drop_lease(task_id)
        self.requeue.appendleft((lease.spec.shard_id, lease.spec.seed))
        node.progress = None
        self._touch_node(node)
        self._emit(now, "lease_abandoned", node_id=node_id, task_id=task_id, shard_id=lease.spec.shard_id)
        return ""

    # ------------------------------------------------------------------ updates
    def submit(self, msg: UpdateSubmission, now: float) -> SubmitReply:
        node = self.nodes.get(msg.node_id)
        if node is None:
            return self._reject(None, REJECT_UNKNOWN_NODE, now, msg)
        node.last_seen = now
        if node.banned:
            return self._reject(node, REJECT_BANNED, now, msg)
        if self.done or self.closed:
            return self._reject(node, REJECT_DONE, now, msg)
        lease = self.leases.get(msg.task_id)
        if lease is None:
            return self._reject(node, REJECT_UNKNOWN_TASK, now, msg)
        spec = lease.spec
        if spec.node_id != msg.node_id:
            return self._reject(node, REJECT_WRONG_NODE, now, msg)
        if msg.base_version != spec.base_version:
            return self._reject(node, REJECT_BASE_MISMATCH, now, msg)
        if msg.tokens != spec.tokens or msg.steps != spec.hparams["steps"]:
            return self._reject(node, REJECT_TOKENS, now, msg)
        if msg.codec != spec.codec:
            return self._reject(node, REJECT_CODEC, now, msg)
        if msg.blob not in (lease.upload_key, keys.accepted(lease.upload_key)):
            return self._reject(node, REJECT_UNKNOWN_TASK, now, msg)
        if not _is_sha256(msg.header_sha256) or not _is_sha256(msg.sha256):
            # The aggregators trust a stored update's bytes through its signed header hash (and the per-block
            # hashes that header lists): an update without one could never be read safely.
            return self._reject(node, REJECT_BLOB, now, msg)
        # Verification's residual commitment chain (a break bans the node; its lease goes with it).
        if self._chain_break(node, msg, now):
            return SubmitReply(False, REJECT_BANNED, self.version)
        # The lease is answered: from here the task is either merged or its shard is requeued.
        self._drop_lease(msg.task_id)
        tau = self.version - spec.base_version
        if tau > self.cfg.max_staleness:
            self.requeue.append((spec.shard_id, spec.seed))
            node.last_problem = now
            return self._reject(node, REJECT_STALE, now, msg, staleness=tau)
        p = Pending(msg.task_id, msg.node_id, spec.base_version, spec.tokens, spec.hparams["steps"], tau, now,
                    msg.blob, msg.sha256, msg.nbytes, msg.codec, (spec.shard_id, spec.seed), msg.ef_in,
                    msg.ef_out, msg.loss, msg.header_sha256)
        last = next(reversed(self.buffer.values()), None)
        self.buffer[msg.task_id] = p
        if last is not None and (last.arrived, last.task_id) > (p.arrived, p.task_id):
            # Keep the buffer in (arrival time, task id) order, the order load_state_dict restores: uploads at
            # the same instant (or a clock that stepped back) would otherwise merge in another order after a
            # restart, and the merged version would differ.
            self.buffer = dict(sorted(self.buffer.items(), key=lambda kv: (kv[1].arrived, kv[0])))
        self._changes.touch("buffer", msg.task_id)
        self.tokens_accepted += spec.tokens
        self.updates_accepted += 1
        node.updates_accepted += 1
        node.tokens_accepted += spec.tokens
        node.bytes_up += msg.nbytes
        node.staleness_sum += tau
        node.staleness_max = max(node.staleness_max, tau)
        node.staleness_last = tau
        node.last_accepted = now
        node.progress = None
        if msg.energy:
            e = msg.energy
            node.energy_j += e["joules"]
            node.energy_task_s += e.get("task_s") or 0.0
            node.energy_tasks += 1
            self.energy_j += e["joules"]
            if e["measured"]:
                node.energy_measured_j += e["joules"]
                self.energy_measured_j += e["joules"]
            if e["source"] not in node.energy_sources and len(node.energy_sources) < 4:
                node.energy_sources.append(e["source"])
        self._touch_node(node)
        self._changes.log("updates", msg.task_id, p.to_doc() | {"signature": msg.signature, "energy": msg.energy,
                                                                 "merged_into": None})
        self._emit(now, "update_accepted", node_id=msg.node_id, task_id=msg.task_id, staleness=tau)
        audit = self._after_accept(node, spec, msg, now)
        self._maybe_merge(now)
        return SubmitReply(True, "ok", self.version, staleness=tau, audit=audit)

    # ------------------------------------------------------------------ the clock
    def tick(self, now: float) -> None:
        """Expire overdue leases (requeueing their shards), fail overdue reveals, free lapsed verifier claims,
        rescale the quorum to the active swarm, and merge a buffer whose oldest update waited out the grace."""
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, task_id = heapq.heappop(self._deadlines)
            lease = self.leases.get(task_id)
            if lease is None or lease.deadline != deadline:
                continue  # answered, or renewed by a heartbeat (a newer heap entry exists)
            self._drop_lease(task_id)
            self.requeue.append((lease.spec.shard_id, lease.spec.seed))
            self.leases_expired += 1
            node = self.nodes.get(lease.spec.node_id)
            if node is not None:
                node.leases_expired += 1
                node.last_problem = now
                node.progress = None
                self._touch_node(node)
            self._emit(now, "lease_expired", node_id=lease.spec.node_id, task_id=task_id,
                       shard_id=lease.spec.shard_id)
        self._expire_reveals(now)
        self._rescale(now)
        if (self.buffer and not self.jobs and len(self.buffer) >= self.cfg.min_updates
                and now - next(iter(self.buffer.values())).arrived >= self.cfg.grace_s):
            self._start_merge(now)

    def _rescale(self, now: float) -> None:
        """The active node count (a scan, but in the tick, off the request path) and the quorum it implies."""
        window = self.cfg.active_window_s or self.cfg.lease_s
        active = sum(1 for n in self.nodes.values() if not n.banned and now - n.last_seen <= window)
        q = effective_quorum(self.cfg.quorum, active, self.cfg.target_staleness)
        if active != self.active_nodes or q != self.quorum_eff:
            self.active_nodes, self.quorum_eff = active, q
            self._changes.meta = True

    # ------------------------------------------------------------------ internals
    def _lease_span(self, steps: int) -> float:
        return self.cfg.lease_s * max(1.0, steps / self.cfg.h)  # lease_s is for an H-step task

    def _add_lease(self, lease: Lease) -> None:
        t = lease.spec.task_id
        self.leases[t] = lease
        self._node_leases.setdefault(lease.spec.node_id, set()).add(t)
        heapq.heappush(self._deadlines, (lease.deadline, t))
        self._changes.touch("leases", t)

    def _drop_lease(self, task_id: str) -> Lease:
        lease = self.leases.pop(task_id)
        held = self._node_leases.get(lease.spec.node_id)
        if held is not None:
            held.discard(task_id)
        self.tokens_outstanding -= lease.spec.tokens
        self._changes.touch("leases", task_id)
        self._changes.meta = True
        return lease  # its heap entry is skipped lazily

    def _next_shard(self, node: NodeRecord) -> tuple[int, int]:
        if self.requeue:
            return self.requeue.popleft()
        if self.cfg.shard_groups > 0:
            return self._next_group_shard(node)
        i = self.next_task
        self.next_task += 1
        shard = self.train_shards[i % len(self.train_shards)]
        digest = hashlib.sha256(f"{self.cfg.run_id}:{self.cfg.seed}:{i}".encode()).digest()
        return shard, int.from_bytes(digest[:4], "little")

    def _next_group_shard(self, node: NodeRecord) -> tuple[int, int]:
        """Non-IID assignment: the node's own contiguous block of training shards, in order."""
        g = node.ordinal % self.cfg.shard_groups
        n, k = len(self.train_shards), self.cfg.shard_groups
        lo = g * n // k
        group = self.train_shards[lo:max((g + 1) * n // k, lo + 1)]
        i = self.group_next.get(str(g), 0)
        self.group_next[str(g)] = i + 1
        digest = hashlib.sha256(f"{self.cfg.run_id}:{self.cfg.seed}:g{g}:{i}".encode()).digest()
        return group[i % len(group)], int.from_bytes(digest[:4], "little")

    def _reject(self, node: NodeRecord | None, reason: str, now: float, msg: UpdateSubmission,
                staleness: int = 0) -> SubmitReply:
        self.updates_rejected += 1
        self.reject_reasons[reason] = self.reject_reasons.get(reason, 0) + 1
        self._changes.meta = True
        if node is not None:
            node.updates_rejected += 1
            node.reject_reasons[reason] = node.reject_reasons.get(reason, 0) + 1
            self._touch_node(node)
        self._emit(now, "update_rejected", node_id=msg.node_id, task_id=msg.task_id, reason=reason)
        return SubmitReply(False, reason, self.version, staleness=staleness)

    def _touch_node(self, node: NodeRecord) -> None:
        self._changes.touch("nodes", node.node_id)

    def _emit(self, now: float, kind: str, **data: Any) -> None:
        ev = Event(now, kind, data)
        self._events.append(ev)
        self._changes.events.append({"time": now, "kind": kind, "data": data})

    # ------------------------------------------------------------------ state as one value
    def state_dict(self) -> dict[str, Any]:
        """The whole engine state as plain JSON-able data: {"meta": {...}, "docs": {collection: {key: doc}}}."""
        return {"meta": self._meta_doc(), "docs": {c: {k: self._doc(c, k) for k in self._collection(c)}
                                                   for c in COLLECTIONS}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore a state_dict (on an engine built with the same config, manifest and parameter count)."""
        meta = sd.get("meta") or {}
        for f in META_FIELDS:
            if f in meta:
                setattr(self, f, meta[f])
        self.reject_reasons = dict(meta.get("reject_reasons", {}))
        self.group_next = dict(meta.get("group_next", {}))
        self.requeue = deque((int(s), int(seed)) for s, seed in meta.get("requeue", []))
        docs = sd.get("docs") or {}
        self.nodes = {k: NodeRecord.from_doc(d) for k, d in docs.get("nodes", {}).items()}
        self.leases = {k: Lease.from_doc(d) for k, d in docs.get("leases", {}).items()}
        buffer = [Pending.from_doc(d) for d in docs.get("buffer", {}).values()]
        self.buffer = {p.task_id: p for p in sorted(buffer, key=lambda p: (p.arrived, p.task_id))}
        self.audits = {k: AuditRecord.from_doc(d) for k, d in docs.get("audits", {}).items()}
        self.chain = {k: d["ef_out"] for k, d in docs.get("chain", {}).items()}
        self.jobs = {k: MergeJob.from_doc(d) for k, d in docs.get("jobs", {}).items()}
        self.tokens = {k: JoinToken.from_doc(d) for k, d in docs.get("tokens", {}).items()}
        self._node_leases, self._deadlines = {}, []
        for t, lease in sorted(self.leases.items()):
            self._node_leases.setdefault(lease.spec.node_id, set()).add(t)
            self._deadlines.append((lease.deadline, t))
        heapq.heapify(self._deadlines)
        self._events = []
        self._changes = Tracker()

    @classmethod
    def from_state(cls, cfg: CoordinatorConfig, manifest: Manifest, num_params: int,
                   sd: dict[str, Any]) -> Coordinator:
        core = cls(cfg, manifest, num_params)
        core.load_state_dict(sd)
        return core

    def take_changes(self) -> Any:
        """The row-level Changes of everything done since the last call (for StateStore.commit)."""
        return self._changes.take(self)

    def _meta_doc(self) -> dict[str, Any]:
        meta = {f: getattr(self, f) for f in META_FIELDS}
        meta["reject_reasons"] = dict(self.reject_reasons)
        meta["group_next"] = dict(self.group_next)
        meta["requeue"] = [[int(s), int(seed)] for s, seed in self.requeue]
        return meta

    def _collection(self, name: str) -> dict[str, Any]:
        return getattr(self, name)

    def _doc(self, coll: str, key: str) -> dict[str, Any] | None:
        obj = self._collection(coll).get(key)
        if obj is None:
            return None
        if coll == "chain":
            return {"ef_out": obj}
        return obj.to_doc()
