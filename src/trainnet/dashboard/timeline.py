"""Node states over time (active / lagging / dropped), rebuilt from a coordinator's event log or a simulation.

    tl = timeline_from_events(events, nodes, lease_s=600, max_staleness=8, start=t0, end=t1)
    tl["spans"]["n0123..."] == [(0.0, 41.2, "active"), (41.2, 60.0, "lagging"), ...]   # seconds since start
    tl["t"], tl["counts"]["active"]                                                     # counts on a grid

The rule is the live dashboard's (`trainnet.dashboard.data.node_state`), applied at each grid time with
what the events say: dropped = banned, or nothing heard from the node for longer than a lease; lagging =
its latest news is an expired lease or a too-stale refusal, or its last accepted update was at least
half the staleness limit behind.
"""

from __future__ import annotations

import bisect
from typing import Any

from trainnet.dashboard.data import node_state

SIGNS_OF_LIFE = ("node_registered", "update_accepted", "update_rejected", "lease_abandoned")


def _node_events(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        node = (e.get("data") or {}).get("node_id")
        if node:
            by.setdefault(node, []).append(e)
    return by


def _state_at(evs: list[dict[str, Any]], times: list[float], t: float, lease_s: float, max_staleness: int) -> str | None:
    i = bisect.bisect_right(times, t)
    if i == 0:
        return None  # not registered yet
    seen = ok = problem = 0.0
    banned, stale = False, None
    for e in evs[:i]:
        k, d = e["kind"], e.get("data") or {}
        if k in SIGNS_OF_LIFE:
            seen = e["time"]
        if k == "update_accepted":
            ok, stale = e["time"], d.get("staleness")
        elif k == "lease_expired" or (k == "update_rejected" and d.get("reason") == "too_stale"):
            problem = e["time"]
        elif k == "node_banned":
            banned = True
    node = {"banned": banned, "last_seen": seen}
    return node_state(node, False, stale, problem, ok, t, lease_s, max_staleness)


def _spans(grid: list[float], states: list[str | None], start: float) -> list[tuple[float, float, str]]:
    out: list[tuple[float, float, str]] = []
    for j, s in enumerate(states):
        if s is None:
            continue
        a = grid[j] - start
        b = (grid[j + 1] if j + 1 < len(grid) else grid[j]) - start
        if out and out[-1][2] == s and abs(out[-1][1] - a) < 1e-9:
            out[-1] = (out[-1][0], b, s)
        else:
            out.append((a, b, s))
    return out


def _grid(start: float, end: float, n: int) -> list[float]:
    end = max(end, start + 1e-6)
    return [start + (end - start) * i / (n - 1) for i in range(n)]


def timeline_from_events(events: list[dict[str, Any]], lease_s: float, max_staleness: int, start: float,
                         end: float, n: int = 200) -> dict[str, Any]:
    grid = _grid(start, end, n)
    counts = {"active": [0] * n, "lagging": [0] * n, "dropped": [0] * n}
    spans = {}
    for node, evs in _node_events(events).items():
        times = [e["time"] for e in evs]
        states = [_state_at(evs, times, t, lease_s, max_staleness) for t in grid]
        for j, s in enumerate(states):
            if s is not None:
                counts[s][j] += 1
        spans[node] = _spans(grid, states, start)
    return {"t": [g - start for g in grid], "counts": counts, "spans": spans}


def timeline_from_sim(nodes: list[dict[str, Any]], end: float, n: int = 200) -> dict[str, Any]:
    """Simulated workers: active from join_at until leave_at (if they leave), then dropped."""
    grid = _grid(0.0, end, n)
    counts = {"active": [0] * n, "lagging": [0] * n, "dropped": [0] * n}
    spans = {}
    for w in nodes:
        join, leave = float(w.get("join_at") or 0.0), w.get("leave_at")
        states: list[str | None] = []
        for t in grid:
            s = None if t < join else ("dropped" if leave is not None and t >= leave else "active")
            states.append(s)
        for j, s in enumerate(states):
            if s is not None:
                counts[s][j] += 1
        spans[w["node_id"]] = _spans(grid, states, 0.0)
    return {"t": grid, "counts": counts, "spans": spans}
