"""Protocol messages between workers and the coordinator's engine, as plain dataclasses.

The sans-IO engine (`trainnet.core.Coordinator`) takes these and returns replies; the service layer maps them
to and from signed HTTP requests (docs/PROTOCOL.md). No message carries tensors: an update is a blob in the
BlobStore, referenced by key and committed to by its sha256 (`UpdateSubmission`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
    token_id: str = ""  # the join token's id ("" when the run needs none)


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
    # "budget_reached" | "lease_limit" | "unknown_node" | "banned" | "done" | "warming_up" | "starting"
    reason: str
    retry_after_s: float = 5.0


@dataclass(frozen=True)
class Heartbeat:
    node_id: str
    task_id: str
    # The worker's progress on the task: {"steps_done", "steps", "tokens_done", "eta_s"} (validated by the shell).
    progress: dict[str, Any] | None = None


@dataclass(frozen=True)
class HeartbeatReply:
    ok: bool
    reason: str = ""
    deadline: float = 0.0


@dataclass
class UpdateSubmission:
    """A node's claim that its update for `task_id` is the blob `blob` (sha256, size), encoded with `codec`."""

    node_id: str
    task_id: str
    base_version: int
    tokens: int
    steps: int
    blob: str
    sha256: str
    nbytes: int
    codec: str
    ef_in: str = ""  # residual commitments (verify/commit.py); "" when absent
    ef_out: str = ""
    loss: float | None = None
    energy: dict[str, Any] | None = None  # {"joules", "measured", "source", "task_s"}, validated by the shell
    signature: str = ""  # the node's update signature (evidence)
    header_sha256: str = ""  # sha256 of the message's prefix + header (signed with the update)


@dataclass(frozen=True)
class SubmitReply:
    accepted: bool
    reason: str  # "ok" or a rejection code
    version: int  # the latest published model version
    staleness: int = 0
    audit: dict[str, Any] = field(default_factory=lambda: {"reveal": False})


@dataclass(frozen=True)
class Event:
    time: float
    kind: str
    data: dict[str, Any]
