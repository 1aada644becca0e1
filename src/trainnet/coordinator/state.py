"""Snapshot and restore of a `Coordinator`'s state, from outside (the core stays sans-IO and untouched).

    meta = core_meta(coord)                      # JSON-able counters, queue and version
    rows = [node_to_row(n) for n in coord.nodes.values()], [lease_to_row(l) for l in coord.leases.values()]
    restore(coord, meta, nodes, leases, buffer, params_flat, momentum)   # on a freshly built Coordinator
    abandon_lease(coord, node_id, task_id, now)  # give a lease back, requeue its shard at once

The server persists these pieces in SQLite after every change (see store.py) and rebuilds a
Coordinator from them on restart: the latest checkpoint, the outer optimizer's momentum, the
counters, and the accepted-but-unmerged updates re-buffered in their arrival order.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

import torch

from trainnet.coordinator.core import Buffered, Coordinator, Lease, NodeRecord
from trainnet.protocol.messages import Event, TaskSpec

# Plain attributes of the core that together with nodes, leases, buffer, params and the optimizer
# make up its whole state.
META_FIELDS = (
    "version", "next_task", "task_counter", "tokens_accepted", "tokens_outstanding", "updates_accepted",
    "updates_rejected", "updates_merged", "outer_steps", "leases_expired", "reject_reasons", "done",
    "audits_passed", "audits_failed",
)
OPTIONAL_META = {"audits_passed", "audits_failed"}  # absent from stores written before verification


def core_meta(coord: Coordinator) -> dict[str, Any]:
    """The core's scalar state and requeue, JSON-able."""
    meta: dict[str, Any] = {f: getattr(coord, f) for f in META_FIELDS}
    meta["reject_reasons"] = dict(coord.reject_reasons)
    meta["requeue"] = [[int(s), int(seed)] for s, seed in coord.requeue]
    return meta


def node_to_row(node: NodeRecord) -> dict[str, Any]:
    return dataclasses.asdict(node)


def node_from_row(row: dict[str, Any]) -> NodeRecord:
    names = {f.name for f in dataclasses.fields(NodeRecord)}
    return NodeRecord(**{k: v for k, v in row.items() if k in names})


def lease_to_row(lease: Lease) -> dict[str, Any]:
    return {"spec": lease.spec.to_dict(), "deadline": lease.deadline}


def lease_from_row(row: dict[str, Any]) -> Lease:
    return Lease(TaskSpec(**row["spec"]), float(row["deadline"]))


def event_to_row(ev: Event) -> dict[str, Any]:
    return {"time": ev.time, "kind": ev.kind, "data": ev.data}


def restore(coord: Coordinator, meta: dict[str, Any], nodes: list[NodeRecord], leases: list[Lease],
            buffer: list[Buffered], params_flat: torch.Tensor, momentum: torch.Tensor | None) -> None:
    """Set a freshly constructed Coordinator to a persisted state (same config and manifest)."""
    if params_flat.shape != coord.params_flat.shape:
        raise ValueError(f"checkpoint has {params_flat.numel()} parameters, model needs {coord.num_params}")
    for f in META_FIELDS:
        if f in meta or f not in OPTIONAL_META:
            setattr(coord, f, meta[f])
    coord.reject_reasons = dict(meta["reject_reasons"])
    coord.requeue = deque((int(s), int(seed)) for s, seed in meta["requeue"])
    coord.params_flat = params_flat.float().clone()
    coord.outer.load_state_dict({} if momentum is None else {"momentum": momentum.float()})
    coord.nodes = {n.node_id: n for n in nodes}
    coord.leases = {lease.spec.task_id: lease for lease in leases}
    coord.buffer = list(buffer)
    coord.drain_events()


def abandon_lease(coord: Coordinator, node_id: str, task_id: str, now: float) -> str:
    """Give a lease back: its shard goes to the front of the queue at once. Returns "" or a reject code."""
    return coord.abandon(node_id, task_id, now)
