"""What the dashboard, /metrics and `trainnet report` show about a coordinator run, read from its stores.

    view = run_view(state, time.time(), service_snapshot(svc))   # live: the engine's in-memory state
    view = run_view(open_state_store(url), time.time())        # offline: the engine's state as stored

Node states: while the run goes on, `active`, `lagging` or `dropped` (`node_state`). Once it is finished
(`run_state` "finished", `ended_at`), a node that was still taking part at the end reads `finished` (idle
since the run ended, not active) and one that had stopped before reads `gone` (`end_state`); the counts of
active / lagging / dropped then describe the nodes at the run's end.

Every figure is either counted by the coordinator (tokens, updates, bytes, audits), measured by it
(held-out loss) or reported by the workers (energy: `measured` true for NVML/RAPL, else an estimate
whose source says so). Money and CO2 are conversions with assumed prices (labelled).
"""

from __future__ import annotations

from typing import Any

from trainnet.energy.cost import EnergyCost

ACTIVE, LAGGING, DROPPED = "active", "lagging", "dropped"
FINISHED, GONE = "finished", "gone"  # a finished run's nodes: there at its end, or stopped before it
THROUGHPUT_WINDOW_S = 60.0
PROBLEM_EVENTS = ("lease_expired", "update_rejected")  # update_rejected counts only when too_stale


def service_snapshot(svc: Any) -> dict[str, Any]:
    """What a running coordinator's engine holds right now. Only references are taken under its lock (a few
    microseconds, whatever the node count); documents are built outside it."""
    with svc.lock:
        core = svc.core
        status = core.status()
        nodes = list(core.nodes.values())
        leases = [(le.spec.node_id, le.deadline) for le in core.leases.values()]
        done_at = core.done_at
    return {"status": status, "nodes": [n.to_doc() for n in nodes],
            "leases": [{"node_id": n, "deadline": d} for n, d in leases], "traffic": svc.traffic_pending(),
            "started_at": getattr(svc, "started_at", None), "done_at": done_at, "degraded": svc.degraded}


def stored_snapshot(state: Any) -> dict[str, Any]:
    """The same from a StateStore alone (a stopped coordinator: `trainnet report`)."""
    snap = state.load_state() or {"meta": {}, "docs": {}}
    meta, docs = snap.get("meta") or {}, snap.get("docs") or {}
    fp = state.get_meta("fingerprint") or {}
    cc = fp.get("coordinator", {})
    status = {"run_id": cc.get("run_id"), "model_version": meta.get("version", 0),
              "tokens": meta.get("tokens_accepted", 0), "tokens_target": cc.get("tokens_target", 0),
              "updates_accepted": meta.get("updates_accepted", 0), "updates_rejected": meta.get("updates_rejected", 0),
              "updates_merged": meta.get("updates_merged", 0), "outer_steps": meta.get("outer_steps", 0),
              "leases_expired": meta.get("leases_expired", 0), "reject_reasons": meta.get("reject_reasons", {}),
              "done": bool(meta.get("done", False)), "buffered": len(docs.get("buffer", {})),
              "audits_pending": len(docs.get("audits", {}))}
    leases = [{"node_id": d["spec"]["node_id"], "deadline": d["deadline"]} for d in docs.get("leases", {}).values()]
    return {"status": status, "nodes": list(docs.get("nodes", {}).values()), "leases": leases, "traffic": {},
            "started_at": None, "done_at": meta.get("done_at"), "degraded": None}


def node_state(node: dict[str, Any], holds_lease: bool, staleness_last: int | None, last_problem: float,
               last_ok: float, now: float, lease_s: float, max_staleness: int) -> str:
    """dropped: banned, or silent for longer than a lease without holding one; lagging: its latest news is
    an expired lease / too-stale refusal, or its last update was at least half the staleness limit old."""
    if node.get("banned") or (not holds_lease and now - float(node.get("last_seen", 0)) > lease_s):
        return DROPPED
    if last_problem > last_ok or (staleness_last is not None and staleness_last >= max(1, max_staleness // 2)):
        return LAGGING
    return ACTIVE


def end_state(state_at_end: str) -> str:
    """A finished run's node: `gone` if it was dropped at the run's end (silent for longer than a lease, or
    banned), else `finished` (it took part until the end and is idle since)."""
    return GONE if state_at_end == DROPPED else FINISHED


def _downsample(points: list, n: int) -> list:
    if len(points) <= n:
        return points
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def token_series(versions: list[dict[str, Any]], start: float | None, max_points: int = 300) -> list[list[float]]:
    """[[time, accepted tokens]] at each published version (the versions log), from the run's start."""
    pts = ([[start, 0]] if start else []) + [[float(v["created"]), int(v["tokens"])]
                                            for v in sorted(versions, key=lambda v: v["version"])]
    return _downsample(pts, max_points)


def throughput(series: list[list[float]], now: float, done: bool) -> tuple[float, float]:
    """(tokens/s, window seconds): over the last minute while running, over the whole run once done."""
    if len(series) < 2:
        return 0.0, 0.0
    if done:
        span = series[-1][0] - series[0][0]
        return (series[-1][1] / span if span > 0 else 0.0), span
    t0 = max(series[0][0], now - THROUGHPUT_WINDOW_S)
    before = max((p[1] for p in series if p[0] <= t0), default=0)
    span = max(now - t0, 1e-9)
    return (series[-1][1] - before) / span, span


def energy_of(n: dict[str, Any]) -> dict[str, Any] | None:
    if not n.get("energy_tasks"):
        return None
    j, jm = float(n.get("energy_j", 0.0)), float(n.get("energy_measured_j", 0.0))
    return {"joules": j, "measured_joules": jm, "task_s": float(n.get("energy_task_s", 0.0)),
            "tasks": n["energy_tasks"], "measured": True if jm == j and j > 0 else (False if jm == 0 else "mixed"),
            "sources": list(n.get("energy_sources", []))}


def energy_summary(per_node: dict[str, dict[str, Any]], cost: EnergyCost | None = None) -> dict[str, Any]:
    cost = cost or EnergyCost()
    j = sum(e["joules"] for e in per_node.values())
    jm = sum(e["measured_joules"] for e in per_node.values())
    return {"joules": j, "kwh": cost.kwh(j), "measured_joules": jm, "estimated_joules": j - jm,
            "measured_share": jm / j if j > 0 else None, "co2_kg": cost.co2_kg(j), "cost_usd": cost.energy_usd(j),
            "sources": sorted({s for e in per_node.values() for s in e["sources"]}),
            "conversion": (f"assumption: {cost.co2_g_per_kwh:g} g CO2/kWh, ${cost.usd_per_kwh:g}/kWh, "
                           f"PUE {cost.pue:g}; energy of accepted updates as reported by the workers")}


def run_view(state: Any, now: float, snap: dict[str, Any] | None = None, events: int = 40) -> dict[str, Any]:
    """One JSON-able dict with everything the dashboard page needs (see docs/OBSERVABILITY.md): the engine's
    snapshot (live, or `stored_snapshot(state)` when none is given) plus the StateStore's curve and logs."""
    live = snap is not None
    snap = snap or stored_snapshot(state)
    fp = state.get_meta("fingerprint") or {}
    cc = fp.get("coordinator", {})
    lease_s, max_stale = float(cc.get("lease_s", 600.0)), int(cc.get("max_staleness", 8))
    status, nodes, leases = snap["status"], snap["nodes"], snap["leases"]
    done = bool(status.get("done"))
    versions = state.log_list("versions", limit=100_000)
    end = (snap.get("done_at") or max((float(v["created"]) for v in versions), default=None)) if done else None
    at = min(now, end) if end else now  # node states of a finished run are judged at its end
    held = {le["node_id"] for le in leases}
    start = min((float(n.get("registered_at", now)) for n in nodes), default=None)
    series = token_series(versions, start)
    rate, window = throughput(series, at, done)
    traffic = state.traffic()
    for k, v in snap.get("traffic", {}).items():
        traffic[k] = traffic.get(k, 0) + v
    cost = EnergyCost()
    energy = {n["node_id"]: e for n in nodes if (e := energy_of(n)) is not None}
    rows, counts = [], {ACTIVE: 0, LAGGING: 0, DROPPED: 0, FINISHED: 0, GONE: 0}
    for n in nodes:
        nid = n["node_id"]
        en = energy.get(nid)
        acc = int(n.get("updates_accepted", 0))
        last_st = n.get("staleness_last") if acc else None
        state_ = node_state(n, nid in held, last_st, float(n.get("last_problem", 0.0)),
                            float(n.get("last_accepted") or 0.0), at, lease_s, max_stale)
        counts[state_] += 1
        shown = end_state(state_) if done else state_
        if done:
            counts[shown] += 1
        seen = float(n.get("last_seen", now))
        rows.append({
            "node_id": nid, "state": shown, "state_at_end": state_ if done else None,
            "tokens": n.get("tokens_accepted", 0), "accepted": acc, "rejected": n.get("updates_rejected", 0),
            "reject_reasons": n.get("reject_reasons", {}), "leases_expired": n.get("leases_expired", 0),
            "staleness_mean": n.get("staleness_sum", 0) / acc if acc else None, "staleness_last": last_st,
            "staleness_max": n.get("staleness_max") if acc else None, "bytes_up": n.get("bytes_up", 0),
            "audits_passed": n.get("audits_passed", 0), "audits_failed": n.get("audits_failed", 0),
            "banned": bool(n.get("banned")), "ban_reason": n.get("ban_reason", ""),
            "energy_j": en["joules"] if en else None, "energy_kwh": cost.kwh(en["joules"]) if en else None,
            "energy_measured": en["measured"] if en else None, "energy_source": "; ".join(en["sources"]) if en else "",
            "task_s": en["task_s"] if en else None, "last_seen": n.get("last_seen"),
            "last_seen_ago_s": max(0.0, now - seen),
            "last_seen_before_end_s": max(0.0, end - seen) if end else None,
            "device": str((n.get("info") or {}).get("device", "")), "progress": n.get("progress"),
        })
    rows.sort(key=lambda r: (-r["tokens"], r["node_id"]))
    curve = state.val_curve()
    target = int(status.get("tokens_target") or cc.get("tokens_target") or 0)
    bytes_in_accepted = sum(int(n.get("bytes_up", 0)) for n in nodes)
    return {
        "run_id": status.get("run_id") or cc.get("run_id"), "time": now, "done": done, "live": live,
        "run_state": "finished" if done else "running", "started_at": start, "ended_at": end,
        "ended_ago_s": max(0.0, now - end) if end else None, "model": fp.get("model", {}),
        "codec": cc.get("codec"), "degraded": snap.get("degraded"),
        "model_version": status.get("model_version", 0), "tokens": status.get("tokens", 0), "tokens_target": target,
        "progress": status.get("tokens", 0) / target if target else None,
        "val_loss": curve[-1]["val_loss"] if curve else None, "val_curve": curve,
        "throughput": {"tokens_per_s": rate, "window_s": window, "series": series},
        "bytes": {"in_accepted": bytes_in_accepted, "in_total": max(bytes_in_accepted, traffic.get("update_in", 0)),
                  "out_total": sum(v for k, v in traffic.items() if k != "update_in"),
                  "by_kind": traffic},
        "nodes": {**counts, "total": len(nodes), "banned": sum(1 for n in nodes if n.get("banned"))},
        "updates": {k: status.get(k, 0) for k in ("updates_accepted", "updates_rejected", "updates_merged",
                                                   "outer_steps", "leases_expired")}
        | {"reject_reasons": status.get("reject_reasons", {}), "leases_active": len(leases),
           "buffered": status.get("buffered", 0)},
        "audits": {"passed": sum(n.get("audits_passed", 0) for n in nodes),
                   "failed": sum(n.get("audits_failed", 0) for n in nodes),
                   "pending": status.get("audits_pending", 0)},
        "energy": energy_summary(energy, cost),
        "contributors": rows,
        "events": state.events_tail(events)[::-1],
    }
