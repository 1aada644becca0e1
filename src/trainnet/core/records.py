"""What the protocol engine keeps: its configuration, reject codes and records, each a JSON-able document.

    node = NodeRecord("n0123", public_key="ab..", registered_at=0.0, last_seen=0.0)
    doc = node.to_doc(); NodeRecord.from_doc(doc) == node

Every record here round-trips through `to_doc()` / `from_doc()` exactly (plain JSON: no tensors, no sets),
which is what lets the core's whole state be one value (`Coordinator.state_dict()`) that a StateStore
persists row by row. Nothing here holds model tensors: updates and model versions are blobs referenced by key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from trainnet.protocol.messages import TaskSpec

# Rejection codes (also the HTTP API's reason codes; docs/PROTOCOL.md).
REJECT_UNKNOWN_NODE = "unknown_node"
REJECT_BANNED = "banned"
REJECT_UNKNOWN_TASK = "unknown_task"  # never leased, already answered, or expired
REJECT_WRONG_NODE = "task_not_held"
REJECT_BASE_MISMATCH = "base_version_mismatch"
REJECT_SHAPE = "bad_shape"
REJECT_NONFINITE = "non_finite"
REJECT_TOKENS = "token_count_mismatch"
REJECT_STALE = "too_stale"
REJECT_DONE = "run_done"
REJECT_CODEC = "wrong_codec"
REJECT_BLOB = "bad_blob"  # the stored bytes do not match what the node signed (hash, size, header)
REJECT_REPLAY = "replay"

T = TypeVar("T")


def _from_doc(cls: type[T], doc: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass
class CoordinatorConfig:
    run_id: str = "run"
    tokens_target: int = 2_000_000
    seed: int = 0
    # task shape
    h: int = 100
    h_start: int | None = None
    h_ramp: float = 0.0
    batch_size: int = 8
    seq_len: int = 64
    lr: float = 3e-3
    lr_warmup: float = 0.02
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "auto"  # TaskHParams.precision; pinned to fp32 when tasks are verified
    codec: str = "q2"  # the run's update codec
    # consensus
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    quorum: int = 4
    grace_s: float = 30.0
    min_updates: int = 1
    max_staleness: int = 8
    staleness_power: float = 0.5
    stale_mode: str = "endpoint"
    partial_scaling: bool = True
    token_weighting: bool = True
    aggregator: str = "robust"
    # Swarm scaling (docs/ALGORITHM.md, "Consensus that scales with the swarm"): with many active nodes the
    # quorum grows to ceil(active / target_staleness), so that a task spanning one task-duration of merges
    # sees about target_staleness new versions whatever the swarm size. 0 turns scaling off.
    target_staleness: float = 2.0
    active_window_s: float = 0.0  # a node counts as active if seen within this long (0: lease_s)
    lease_s: float = 600.0
    max_leases_per_node: int = 1
    warm_start_tokens: int = 0
    warm_start_codec: str = "fp32"
    # verification
    verify_rate: float = 0.12
    verify_probation: int = 1
    ban_after_failures: int = 1
    reveal_s: float = 0.0  # an audited task's residuals are due this long after acceptance (0: 10 x lease_s)
    audit_claim_s: float = 0.0  # a verifier's claim lapses after this x max(1, steps / H) (0: lease_s)
    audit_key: str = "change-me"  # secret: decides which tasks are audited and the upload keys
    shard_groups: int = 0
    # the data plane: aggregator shards and what a merge task carries
    shards: int = 1
    publish_codec: str = "q4"  # the published per-version model delta (coordinator-side error feedback)
    full_every: int = 16  # a full bf16 checkpoint every this many versions (the first and the last: exact)
    merge_lease_s: float = 300.0  # an aggregator's claim on a merge task lapses after this long
    block: int = 1 << 20  # parameters per statistics block / published chunk (shards own whole blocks)

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> CoordinatorConfig:
        return _from_doc(cls, doc)


@dataclass
class NodeRecord:
    node_id: str
    public_key: str
    registered_at: float
    last_seen: float
    ordinal: int = 0  # registration order (non-IID shard groups), kept so nothing scans all nodes
    token_id: str = ""  # the join token it registered with ("" = none)
    counter: int = 0  # highest request counter seen (replay protection; docs/PROTOCOL.md)
    tasks_leased: int = 0
    updates_accepted: int = 0
    updates_rejected: int = 0
    updates_dropped: int = 0  # accepted, then dropped unmerged (invalid blob, or its node banned)
    # Regular (not warm-start) updates accepted and not dropped, while verifying: what probation counts.
    probation_seen: int = 0
    leases_expired: int = 0
    tokens_accepted: int = 0
    bytes_up: int = 0
    staleness_sum: int = 0
    staleness_max: int = 0
    staleness_last: int = 0
    last_accepted: float | None = None
    energy_j: float = 0.0
    energy_measured_j: float = 0.0
    energy_task_s: float = 0.0
    energy_tasks: int = 0
    energy_sources: list[str] = field(default_factory=list)  # distinct sources reported (at most 4 kept)
    last_problem: float = 0.0  # when its last lease expired or its last update was refused as too stale
    reject_reasons: dict[str, int] = field(default_factory=dict)
    banned: bool = False
    ban_reason: str = ""
    audits_passed: int = 0
    audits_failed: int = 0
    evidence: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] | None = None  # the worker's last reported progress on its current task

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> NodeRecord:
        return _from_doc(cls, doc)


@dataclass
class Lease:
    spec: TaskSpec
    deadline: float
    upload_key: str  # the blob key this task's update goes to (server-chosen)
    progress: dict[str, Any] | None = None

    def to_doc(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "deadline": self.deadline, "upload_key": self.upload_key,
                "progress": self.progress}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Lease:
        return cls(TaskSpec(**doc["spec"]), float(doc["deadline"]), str(doc["upload_key"]), doc.get("progress"))


@dataclass
class Pending:
    """An accepted update waiting to be merged: where its bytes are and what the node claimed about them."""

    task_id: str
    node_id: str
    base_version: int
    tokens: int
    steps: int
    staleness: int  # at acceptance
    arrived: float
    blob: str
    sha256: str
    nbytes: int
    codec: str
    shard: tuple[int, int]  # (shard_id, seed): requeued if the update is dropped unmerged
    ef_in: str = ""
    ef_out: str = ""
    loss: float | None = None
    header_sha256: str = ""  # sha256 of the message's prefix + header, signed by the node: range readers check it

    def to_doc(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shard"] = list(self.shard)
        return d

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Pending:
        p = _from_doc(cls, doc)
        p.shard = (int(doc["shard"][0]), int(doc["shard"][1]))
        return p


@dataclass
class AuditRecord:
    """A task picked for recomputation. States: reveal (waiting for the worker's residuals), ready (a verifier
    may claim it), claimed (a verifier holds it until claim_deadline)."""

    task_id: str
    node_id: str
    spec: TaskSpec
    blob: str
    sha256: str
    ef_in: str
    ef_out: str
    accepted_at: float
    reveal_deadline: float | None  # None: nothing to reveal (empty residuals)
    residual_blob: str | None = None
    merged_into: int | None = None
    claimed_by: str | None = None
    claim_deadline: float = 0.0

    @property
    def ready(self) -> bool:
        return self.reveal_deadline is None or self.residual_blob is not None

    def to_doc(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spec"] = self.spec.to_dict()
        return d

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> AuditRecord:
        a = _from_doc(cls, doc)
        a.spec = TaskSpec(**doc["spec"])
        return a


@dataclass
class MergeJob:
    """A merge decision being executed by the data plane: which updates, with which weights, by which rule.

    phase "stats": aggregators validate and measure their slice of every update; "apply": they aggregate and
    take the outer step on their slice; "publish": the shell writes the version manifest."""

    job_id: str
    kind: str  # "merge" | "warm_start"
    version_from: int
    updates: list[dict[str, Any]]  # Pending docs in merge order
    weights: list[float]  # relative merge weights (token x staleness), aligned with updates
    damping: float  # staleness damping x partial-merge scaling
    rule: str
    seed: int
    created: float
    phase: str = "stats"
    excluded: dict[str, str] = field(default_factory=dict)  # task_id -> reason (invalid, or node banned)
    plan: dict[str, Any] | None = None  # the apply phase's decision (row scales, selection)
    results: dict[str, Any] | None = None  # per-shard apply results (state and published blob hashes)

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> MergeJob:
        return _from_doc(cls, doc)


@dataclass
class JoinToken:
    """A join token (stored by hash): how many keys may register with it, and whether a ban revoked it.

    A personal token (`trainnet tokens issue`) names one participant: a ban of any of its keys revokes it and
    bans its other keys. A shared token (`--join-token`, `shared=True`) names no one: banning a key that joined
    with it must not close the run to everyone else, so a ban leaves it alone."""

    token_id: str
    sha256: str
    max_keys: int
    keys: list[str] = field(default_factory=list)
    revoked: str = ""  # reason, when revoked
    label: str = ""
    shared: bool = False

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> JoinToken:
        return _from_doc(cls, doc)
