"""The coordinator's configuration, rejection codes and records (the data the core keeps).

Split from core.py so the state machine reads on its own; shells (server store, simulator) use these
types to persist and restore the core's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from trainnet.protocol.messages import TaskSpec

# Rejection codes (also the HTTP API's reason codes).
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
    precision: str = "auto"  # TaskHParams.precision; task_precision() pins it when tasks are verified
    # consensus
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    quorum: int = 4
    grace_s: float = 30.0
    min_updates: int = 1
    max_staleness: int = 8
    staleness_power: float = 0.5
    # "damp": merge a stale pseudo-gradient as sent, damped by its staleness weight.
    # "endpoint": re-base it on the current model first: the worker's local endpoint is
    # theta_base - delta, so its pseudo-gradient from today's model is delta - (theta_base - theta_now).
    # Progress the model already made is then not applied twice (needs the last max_staleness versions).
    stale_mode: str = "endpoint"
    # A buffer merged by the grace window before reaching the quorum moves the model by len/quorum of a
    # full step, so every accepted update weighs the same whether it arrived in a full or partial buffer.
    partial_scaling: bool = True
    token_weighting: bool = True
    aggregator: str = "robust"
    lease_s: float = 600.0
    max_leases_per_node: int = 1
    # Warm start: the first task is one long task of this many tokens on a single node, applied as
    # is (outer lr 1, no momentum). It replaces a pre-trained checkpoint, costs one upload in bytes,
    # and its tokens count in the budget like any other. 0 disables it.
    warm_start_tokens: int = 0
    warm_start_codec: str = "fp32"  # the warm start is sent whole: sparsifying it would lose most of it
    # Verification by recomputation: this share of accepted tasks is audited (chosen by a keyed hash
    # the workers cannot predict); `ban_after_failures` failed audits ban a node.
    verify_rate: float = 0.12
    verify_probation: int = 1  # a node's first N accepted regular updates are always audited
    ban_after_failures: int = 1
    audit_key: str = "change-me"  # secret in deployments: it decides which tasks are audited
    # Non-IID data: > 0 splits the training shards into this many contiguous groups and node k (in
    # registration order) draws its fresh tasks from group k mod shard_groups. 0: one shared queue.
    shard_groups: int = 0


@dataclass
class NodeRecord:
    node_id: str
    public_key: str
    registered_at: float
    last_seen: float
    tasks_leased: int = 0
    updates_accepted: int = 0
    updates_rejected: int = 0
    leases_expired: int = 0
    tokens_accepted: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    banned: bool = False
    ban_reason: str = ""
    audits_passed: int = 0
    audits_failed: int = 0
    evidence: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Audit:
    """A task picked for recomputation, with the update exactly as the coordinator received it."""

    spec: TaskSpec
    claimed: dict[str, torch.Tensor]
    accepted_at: float
    merged_into: int | None = None  # the version that merged it, once merged


@dataclass
class Lease:
    spec: TaskSpec
    deadline: float


@dataclass
class Buffered:
    node_id: str
    task_id: str
    delta: torch.Tensor  # flat fp32
    tokens: int
    staleness: int
    arrived: float
    shard: tuple[int, int] | None = None  # (shard_id, seed), requeued if the update is dropped unmerged
