"""Protocol messages between workers and the coordinator, as plain dataclasses.

The sans-IO `Coordinator` takes these and returns replies; the HTTP shell maps them to JSON
(tensors travel separately, in the update wire format). Every field is a JSON-able scalar except
`UpdateSubmission.delta`, which the shell fills from a validated decoded payload.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class TaskSpec:
    """Everything that determines a task's result, fixed publicly by the coordinator."""

    run_id: str
    task_id: str
    node_id: str
    base_version: int
    shard_id: int
    shard_sha256: str
    manifest_root: str
    seed: int
    hparams: dict[str, Any]  # TaskHParams fields
    tokens: int
    issued_at: float
    deadline: float
    codec: str = ""  # the codec this task's update must use; "" = the run's codec (see GET /v1/info)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Register:
    node_id: str
    public_key: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Registered:
    ok: bool
    node_id: str
    run_id: str
    reason: str = ""


@dataclass(frozen=True)
class LeaseRequest:
    node_id: str


@dataclass(frozen=True)
class NoTask:
    reason: str  # "budget_reached" | "lease_limit" | "unknown_node" | "banned" | "done" | "all_shards_leased"
    retry_after_s: float = 5.0


@dataclass(frozen=True)
class Heartbeat:
    node_id: str
    task_id: str


@dataclass(frozen=True)
class HeartbeatReply:
    ok: bool
    reason: str = ""
    deadline: float = 0.0


@dataclass
class UpdateSubmission:
    node_id: str
    task_id: str
    base_version: int
    delta: dict[str, torch.Tensor]
    tokens: int
    steps: int
    loss: float = float("nan")
    wire_bytes: int = 0  # size of the encoded upload, for accounting


@dataclass(frozen=True)
class SubmitReply:
    accepted: bool
    reason: str  # "ok" or a rejection code
    version: int  # model version after handling the update
    staleness: int = 0
    aggregated: bool = False


@dataclass(frozen=True)
class Event:
    time: float
    kind: str
    data: dict[str, Any]
