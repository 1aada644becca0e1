"""The coordinator's state machine, sans IO: messages and the clock in, replies and events out.

    coord = Coordinator(CoordinatorConfig(tokens_target=2_000_000), manifest, init_params)
    coord.register(Register("w0"), now=0.0)
    task = coord.lease(LeaseRequest("w0"), now=0.0)          # TaskSpec or NoTask
    reply = coord.submit(UpdateSubmission(...), now=12.5)     # SubmitReply
    coord.tick(now=13.0)                                      # expire leases, grace-window merges
    events = coord.drain_events()

It never opens a socket or a file and never reads a clock: the simulator and the HTTP server
drive the same object, so a number measured in simulation is a number about the code that ships.

Gradient consensus (see docs/ALGORITHM.md): accepted pseudo-gradients wait in a buffer; as soon as
`quorum` of them are there (or the oldest has waited `grace_s` seconds) they are merged with
token x staleness weights by the configured rule and applied by the outer Nesterov optimizer, which
makes a new model version. The coordinator never waits for the slowest node: a task whose lease
expires is handed out again (same shard, same seed) and its late answer is refused.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from typing import Any

import torch

from trainnet.consensus import get_aggregator, staleness_weight
from trainnet.consensus.outer import OuterOptimizer
from trainnet.coordinator.records import (  # noqa: F401  (re-exported for shells)
    REJECT_BANNED,
    REJECT_BASE_MISMATCH,
    REJECT_DONE,
    REJECT_NONFINITE,
    REJECT_SHAPE,
    REJECT_STALE,
    REJECT_TOKENS,
    REJECT_UNKNOWN_NODE,
    REJECT_UNKNOWN_TASK,
    REJECT_WRONG_NODE,
    Audit,
    Buffered,
    CoordinatorConfig,
    Lease,
    NodeRecord,
)
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
from trainnet.train.local import ParamDict, flatten, unflatten
from trainnet.train.schedule import h_at


class Coordinator:
    def __init__(self, cfg: CoordinatorConfig, manifest: Manifest, init_params: ParamDict) -> None:
        self.cfg = cfg
        self.manifest = manifest
        self.template = {k: v.detach().clone().float() for k, v in init_params.items()}
        self.params_flat = flatten(self.template)
        self.outer = OuterOptimizer(cfg.outer_lr, cfg.outer_momentum, cfg.nesterov)
        self.last_merged: torch.Tensor | None = None  # the previous merged pseudo-gradient (centered clipping)
        if cfg.stale_mode not in ("damp", "endpoint"):
            raise ValueError(f"stale_mode must be 'damp' or 'endpoint' (got {cfg.stale_mode!r})")
        self.history: dict[int, torch.Tensor] = {}  # version -> params, for stale_mode="endpoint"
        self._remember_version(0)
        self.aggregate_fn = get_aggregator(cfg.aggregator)
        self.version = 0
        self.nodes: dict[str, NodeRecord] = {}
        self.leases: dict[str, Lease] = {}
        self.buffer: list[Buffered] = []
        self.train_shards = manifest.ids("train")
        if not self.train_shards:
            raise ValueError("manifest has no training shards")
        self.requeue: deque[tuple[int, int]] = deque()  # (shard_id, seed) of tasks to hand out again
        self.next_task = 0  # counter over fresh (shard, seed) pairs
        self.group_next: dict[int, int] = {}  # per shard group, with cfg.shard_groups (non-IID)
        self.task_counter = 0  # counter over task ids (requeued tasks get new ids)
        self.tokens_accepted = 0
        self.tokens_outstanding = 0
        self.updates_accepted = 0
        self.updates_rejected = 0
        self.updates_merged = 0
        self.outer_steps = 0
        self.leases_expired = 0
        self.reject_reasons: dict[str, int] = {}
        self.audits: dict[str, Audit] = {}
        self.audits_passed = 0
        self.audits_failed = 0
        self.done = False
        self._events: list[Event] = []

    # ------------------------------------------------------------------ queries
    def params(self) -> ParamDict:
        """The current global model as named tensors (views of one flat vector: copy to keep)."""
        return unflatten(self.params_flat, self.template)

    @property
    def num_params(self) -> int:
        return self.params_flat.numel()

    def progress(self) -> float:
        return (self.tokens_accepted + self.tokens_outstanding) / max(self.cfg.tokens_target, 1)

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def drain_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def status(self) -> dict[str, Any]:
        return {
            "run_id": self.cfg.run_id,
            "model_version": self.version,
            "tokens": self.tokens_accepted,
            "tokens_target": self.cfg.tokens_target,
            "updates_accepted": self.updates_accepted,
            "updates_rejected": self.updates_rejected,
            "updates_merged": self.updates_merged,
            "outer_steps": self.outer_steps,
            "leases_active": len(self.leases),
            "leases_expired": self.leases_expired,
            "buffered": len(self.buffer),
            "nodes": len(self.nodes),
            "reject_reasons": dict(self.reject_reasons),
            "audits_passed": self.audits_passed,
            "audits_failed": self.audits_failed,
            "audits_pending": len(self.audits),
            "nodes_banned": {n.node_id: n.ban_reason for n in self.nodes.values() if n.banned},
            "done": self.done,
        }

    # ------------------------------------------------------------------ messages
    def handle(self, msg: Any, now: float) -> Any:
        """Dispatch any protocol message to its handler."""
        if isinstance(msg, Register):
            return self.register(msg, now)
        if isinstance(msg, LeaseRequest):
            return self.lease(msg, now)
        if isinstance(msg, Heartbeat):
            return self.heartbeat(msg, now)
        if isinstance(msg, UpdateSubmission):
            return self.submit(msg, now)
        raise TypeError(f"unknown message type {type(msg).__name__}")

    def register(self, msg: Register, now: float) -> Registered:
        node = self.nodes.get(msg.node_id)
        if node is not None:
            if node.banned:
                return Registered(False, msg.node_id, self.cfg.run_id, REJECT_BANNED)
            if node.public_key and msg.public_key and node.public_key != msg.public_key:
                return Registered(False, msg.node_id, self.cfg.run_id, "key_mismatch")
            node.last_seen = now
            return Registered(True, msg.node_id, self.cfg.run_id)
        self.nodes[msg.node_id] = NodeRecord(msg.node_id, msg.public_key, now, now, info=dict(msg.info))
        self._emit(now, "node_registered", node_id=msg.node_id)
        return Registered(True, msg.node_id, self.cfg.run_id)

    def lease(self, msg: LeaseRequest, now: float) -> TaskSpec | NoTask:
        node = self.nodes.get(msg.node_id)
        if node is None:
            return NoTask("unknown_node")
        if node.banned:
            return NoTask("banned", retry_after_s=math.inf)
        node.last_seen = now
        if self.done:
            return NoTask("done", retry_after_s=math.inf)
        held = sum(1 for lease in self.leases.values() if lease.spec.node_id == msg.node_id)
        if held >= self.cfg.max_leases_per_node:
            return NoTask("lease_limit")
        if self.tokens_accepted + self.tokens_outstanding >= self.cfg.tokens_target:
            return NoTask("budget_reached")  # in-flight tasks may still expire and free budget
        c = self.cfg
        warm = c.warm_start_tokens > 0 and self.version == 0
        if warm and (self.leases or self.buffer):
            return NoTask("warming_up")  # one node trains the warm start; the rest wait for version 1
        shard_id, seed = self._next_shard(msg.node_id)
        progress = self.progress()
        steps = h_at(progress, c.h, c.h_start, c.h_ramp)
        if warm:
            steps = max(1, round(c.warm_start_tokens / (c.batch_size * c.seq_len)))
        tokens = steps * c.batch_size * c.seq_len
        # The task follows the run's lr schedule over the share of the budget it covers.
        end = progress + tokens / max(c.tokens_target, 1)
        hparams = {
            "steps": steps,
            "lr": c.lr,
            "progress_start": progress,
            "progress_end": end,
            "lr_warmup": c.lr_warmup,
            "min_lr_ratio": c.min_lr_ratio,
            "batch_size": c.batch_size,
            "seq_len": c.seq_len,
            "weight_decay": c.weight_decay,
            "beta1": c.beta1,
            "beta2": c.beta2,
            "grad_clip": c.grad_clip,
            "precision": c.precision,
        }
        task_id = f"t{self.task_counter:07d}"
        self.task_counter += 1
        spec = TaskSpec(
            run_id=c.run_id,
            task_id=task_id,
            node_id=msg.node_id,
            base_version=self.version,
            shard_id=shard_id,
            shard_sha256=self.manifest.entry(shard_id).sha256,
            manifest_root=self.manifest.root_hash,
            seed=seed,
            hparams=hparams,
            tokens=tokens,
            issued_at=now,
            deadline=now + self._lease_span(steps),
            codec=c.warm_start_codec if warm else "",
        )
        self.leases[task_id] = Lease(spec, spec.deadline)
        self.tokens_outstanding += tokens
        node.tasks_leased += 1
        return spec

    def heartbeat(self, msg: Heartbeat, now: float) -> HeartbeatReply:
        lease = self.leases.get(msg.task_id)
        node = self.nodes.get(msg.node_id)
        if node is None:
            return HeartbeatReply(False, REJECT_UNKNOWN_NODE)
        node.last_seen = now
        if lease is None:
            return HeartbeatReply(False, REJECT_UNKNOWN_TASK)
        if lease.spec.node_id != msg.node_id:
            return HeartbeatReply(False, REJECT_WRONG_NODE)
        lease.deadline = now + self._lease_span(lease.spec.hparams["steps"])
        return HeartbeatReply(True, deadline=lease.deadline)

    def abandon(self, node_id: str, task_id: str, now: float) -> str:
        """A worker gives its lease back (e.g. on Ctrl-C): the shard goes to the front of the queue at
        once. Not counted as an expiry. Returns "" or a reject code."""
        node = self.nodes.get(node_id)
        if node is None:
            return REJECT_UNKNOWN_NODE
        node.last_seen = now
        lease = self.leases.get(task_id)
        if lease is None:
            return REJECT_UNKNOWN_TASK
        if lease.spec.node_id != node_id:
            return REJECT_WRONG_NODE
        del self.leases[task_id]
        self.tokens_outstanding -= lease.spec.tokens
        self.requeue.appendleft((lease.spec.shard_id, lease.spec.seed))
        self._emit(now, "lease_abandoned", node_id=node_id, task_id=task_id, shard_id=lease.spec.shard_id)
        return ""

    def submit(self, msg: UpdateSubmission, now: float) -> SubmitReply:
        node = self.nodes.get(msg.node_id)
        if node is None:
            return self._reject(None, REJECT_UNKNOWN_NODE, now, msg)
        node.last_seen = now
        if node.banned:
            return self._reject(node, REJECT_BANNED, now, msg)
        if self.done:
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
        reason = self._check_delta(msg.delta)
        if reason:
            return self._reject(node, reason, now, msg)
        # The lease is answered: from here on the task is either merged or its shard is requeued.
        del self.leases[msg.task_id]
        self.tokens_outstanding -= spec.tokens
        tau = self.version - spec.base_version
        if tau > self.cfg.max_staleness:
            self.requeue.append((spec.shard_id, spec.seed))
            return self._reject(node, REJECT_STALE, now, msg, staleness=tau)
        flat = self.rebase(flatten(msg.delta, self.template), spec.base_version)
        self.buffer.append(Buffered(msg.node_id, msg.task_id, flat, spec.tokens, tau, now,
                                    shard=(spec.shard_id, spec.seed)))
        self.tokens_accepted += spec.tokens
        self.updates_accepted += 1
        node.updates_accepted += 1
        node.tokens_accepted += spec.tokens
        self._emit(now, "update_accepted", node_id=msg.node_id, task_id=msg.task_id, staleness=tau)
        # Probation: a node's first regular updates are always audited (the warm start, a task with its
        # own codec, is too large for that and follows verify_rate).
        probation = not spec.codec and node.updates_accepted <= self.cfg.verify_probation
        if self._audit_selected(spec.task_id, probation):
            self.audits[spec.task_id] = Audit(spec, msg.delta, now)
            self._emit(now, "audit_requested", node_id=msg.node_id, task_id=spec.task_id)
        aggregated = False
        if self.cfg.warm_start_tokens > 0 and self.version == 0:
            self._apply_warm_start(now)
            aggregated = True
        elif len(self.buffer) >= self.cfg.quorum:
            self._aggregate(now)
            aggregated = True
        if self.tokens_accepted >= self.cfg.tokens_target:
            aggregated = self._finish(now) or aggregated
        return SubmitReply(True, "ok", self.version, staleness=tau, aggregated=aggregated)

    def tick(self, now: float) -> None:
        """Advance the clock: expire overdue leases (requeueing their shards), merge a buffer whose
        oldest update has waited out the grace window."""
        for task_id in [t for t, lease in self.leases.items() if lease.deadline <= now]:
            lease = self.leases.pop(task_id)
            self.tokens_outstanding -= lease.spec.tokens
            self.requeue.append((lease.spec.shard_id, lease.spec.seed))
            self.leases_expired += 1
            node = self.nodes.get(lease.spec.node_id)
            if node is not None:
                node.leases_expired += 1
            self._emit(now, "lease_expired", node_id=lease.spec.node_id, task_id=task_id,
                       shard_id=lease.spec.shard_id)
        if (
            self.buffer
            and len(self.buffer) >= self.cfg.min_updates
            and now - self.buffer[0].arrived >= self.cfg.grace_s
        ):
            self._aggregate(now)

    def ban(self, node_id: str, reason: str, now: float) -> int:
        """Ban a node: refuse it from now on and drop its buffered (not yet merged) updates.
        Returns how many buffered updates were dropped."""
        node = self.nodes[node_id]
        node.banned, node.ban_reason = True, reason
        dropped = [b for b in self.buffer if b.node_id == node_id]
        self.buffer = [b for b in self.buffer if b.node_id != node_id]
        for b in dropped:  # their data is trained again by someone else
            self.tokens_accepted -= b.tokens
            self.updates_accepted -= 1
            if b.shard is not None:
                self.requeue.append(b.shard)
            self.audits.pop(b.task_id, None)
        for task_id in [t for t, lease in self.leases.items() if lease.spec.node_id == node_id]:
            lease = self.leases.pop(task_id)
            self.tokens_outstanding -= lease.spec.tokens
            self.requeue.append((lease.spec.shard_id, lease.spec.seed))
        self._emit(now, "node_banned", node_id=node_id, reason=reason, dropped=len(dropped))
        return len(dropped)

    def pending_audits(self) -> list[Audit]:
        """Tasks waiting for a verifier to recompute them (oldest first)."""
        return sorted(self.audits.values(), key=lambda a: a.accepted_at)

    def report_audit(self, task_id: str, passed: bool, detail: dict[str, Any], now: float) -> bool:
        """Record a verifier's verdict on an audited task. A failure is evidence against the node; enough
        evidence bans it (dropping its pending updates). Returns True if the node was banned now."""
        audit = self.audits.pop(task_id, None)
        if audit is None:
            raise KeyError(f"no pending audit for task {task_id}")
        node = self.nodes[audit.spec.node_id]
        if passed:
            node.audits_passed += 1
            self.audits_passed += 1
            self._emit(now, "audit_passed", node_id=node.node_id, task_id=task_id)
            return False
        node.audits_failed += 1
        self.audits_failed += 1
        node.evidence.append({"task_id": task_id, "time": now, **detail})
        self._emit(now, "audit_failed", node_id=node.node_id, task_id=task_id, **detail)
        if not node.banned and node.audits_failed >= self.cfg.ban_after_failures:
            self.ban(node.node_id, f"failed {node.audits_failed} audit(s)", now)
            return True
        return False

    # ------------------------------------------------------------------ internals
    def _lease_span(self, steps: int) -> float:
        return self.cfg.lease_s * max(1.0, steps / self.cfg.h)  # lease_s is for an H-step task

    def _audit_selected(self, task_id: str, probation: bool = False) -> bool:
        if self.cfg.verify_rate <= 0:
            return False
        if probation:
            return True
        digest = hashlib.sha256(f"{self.cfg.audit_key}:{self.cfg.seed}:{task_id}".encode()).digest()
        return int.from_bytes(digest[:8], "little") / 2**64 < self.cfg.verify_rate

    def _next_shard(self, node_id: str | None = None) -> tuple[int, int]:
        if self.requeue:
            return self.requeue.popleft()
        if self.cfg.shard_groups > 0 and node_id is not None:
            return self._next_group_shard(node_id)
        i = self.next_task
        self.next_task += 1
        shard = self.train_shards[i % len(self.train_shards)]
        digest = hashlib.sha256(f"{self.cfg.run_id}:{self.cfg.seed}:{i}".encode()).digest()
        return shard, int.from_bytes(digest[:4], "little")

    def _next_group_shard(self, node_id: str) -> tuple[int, int]:
        """Non-IID assignment: the node's own contiguous block of training shards, in order."""
        g = list(self.nodes).index(node_id) % self.cfg.shard_groups
        n, k = len(self.train_shards), self.cfg.shard_groups
        lo = g * n // k
        group = self.train_shards[lo:max((g + 1) * n // k, lo + 1)]
        i = self.group_next.get(g, 0)
        self.group_next[g] = i + 1
        digest = hashlib.sha256(f"{self.cfg.run_id}:{self.cfg.seed}:g{g}:{i}".encode()).digest()
        return group[i % len(group)], int.from_bytes(digest[:4], "little")

    def _check_delta(self, delta: dict[str, torch.Tensor]) -> str:
        if set(delta) != set(self.template):
            return REJECT_SHAPE
        for name, ref in self.template.items():
            t = delta[name]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(ref.shape):
                return REJECT_SHAPE
            if not torch.isfinite(t).all():
                return REJECT_NONFINITE
        return ""

    def _reject(self, node: NodeRecord | None, reason: str, now: float, msg: UpdateSubmission,
                staleness: int = 0) -> SubmitReply:
        self.updates_rejected += 1
        self.reject_reasons[reason] = self.reject_reasons.get(reason, 0) + 1
        if node is not None:
            node.updates_rejected += 1
            node.reject_reasons[reason] = node.reject_reasons.get(reason, 0) + 1
        self._emit(now, "update_rejected", node_id=msg.node_id, task_id=msg.task_id, reason=reason)
        return SubmitReply(False, reason, self.version, staleness=staleness)

    def _aggregate(self, now: float) -> None:
        c = self.cfg
        updates = torch.stack([b.delta for b in self.buffer])
        tokens = torch.tensor([float(b.tokens) if c.token_weighting else 1.0 for b in self.buffer],
                              dtype=torch.float64)
        fresh = torch.tensor([staleness_weight(b.staleness, c.staleness_power) for b in self.buffer],
                             dtype=torch.float64)
        w = tokens * fresh
        # The rule sees relative weights (sum 1); the step is then damped by the buffer's token-weighted
        # freshness, so a buffer of stale updates (whose progress the model partly has already)
        # moves the model less than a fresh one (FedBuff-style staleness scaling).
        damping = float(w.sum() / tokens.sum())
        if c.partial_scaling:
            damping *= min(1.0, len(self.buffer) / c.quorum)
        merged = self.aggregate_fn(updates, (w / w.sum()).float(), center=self.last_merged, seed=self.version)
        merged = merged * damping
        self.last_merged = merged
        self._commit_version(self.outer.step(self.params_flat, merged), now, "aggregated")

    def _commit_version(self, params: torch.Tensor, now: float, kind: str) -> None:
        """The buffer is merged: install the new parameters as the next version and empty the buffer."""
        n = len(self.buffer)
        self.params_flat = params
        self.version += 1
        self.outer_steps += 1
        self.updates_merged += n
        for b in self.buffer:
            if b.task_id in self.audits:
                self.audits[b.task_id].merged_into = self.version
        self.buffer = []
        self._remember_version(self.version)
        self._emit(now, kind, version=self.version, updates=n)

    def rebase(self, flat: torch.Tensor, base_version: int) -> torch.Tensor:
        """The pseudo-gradient as merged: as sent ("damp"), or re-based on the current model ("endpoint").
        A shell restoring buffered updates after a restart calls this with the history reloaded."""
        if self.cfg.stale_mode != "endpoint" or base_version == self.version:
            return flat
        base = self.history.get(base_version)
        if base is None:
            raise KeyError(f"version {base_version} is not in the staleness history (have {sorted(self.history)})")
        return flat - (base - self.params_flat)

    def _remember_version(self, version: int) -> None:
        if self.cfg.stale_mode != "endpoint":
            return
        self.history[version] = self.params_flat
        for old in [v for v in self.history if v < version - self.cfg.max_staleness]:
            del self.history[old]

    def _apply_warm_start(self, now: float) -> None:
        (b,) = self.buffer
        self._commit_version(self.params_flat - b.delta, now, "warm_start_applied")

    def _finish(self, now: float) -> bool:
        merged = False
        if self.buffer:
            self._aggregate(now)
            merged = True
        self.done = True
        self._emit(now, "run_done", version=self.version, tokens=self.tokens_accepted)
        return merged

    def _emit(self, now: float, kind: str, **data: Any) -> None:
        self._events.append(Event(now, kind, data))
