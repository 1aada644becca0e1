"""What the dashboard, /metrics and `trainnet report` show about a coordinator run, read from its state dir.

    db = RunDB(Path("state"))                   # a second, read-only-in-practice SQLite connection
    view = run_view(db, time.time())            # offline: counters, nodes and leases from the store
    view = run_view(db, time.time(), live_snapshot(svc))   # live: the core's in-memory state

Node states: while the run goes on, `active`, `lagging` or `dropped` (`node_state`). Once it is finished
(`run_state` "finished", `ended_at`), a node that was still taking part at the end reads `finished` (idle
since the run ended, not active) and one that had stopped before reads `gone` (`end_state`); the counts of
active / lagging / dropped then describe the nodes at the run's end.

Every figure is either counted by the coordinator (tokens, updates, bytes, audits), measured by it
(held-out loss) or reported by the workers (energy: `measured` true for NVML/RAPL, else an estimate
whose source says so). Money and CO2 are conversions with assumed prices (labelled).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from trainnet.energy.cost import EnergyCost

ACTIVE, LAGGING, DROPPED = "active", "lagging", "dropped"
FINISHED, GONE = "finished", "gone"  # a finished run's nodes: there at its end, or stopped before it
THROUGHPUT_WINDOW_S = 60.0
PROBLEM_EVENTS = ("lease_expired", "update_rejected")  # update_rejected counts only when too_stale


class RunDB:
    """Queries over a coordinator's `coordinator.db`; missing tables (older state dirs) read as empty."""

    def __init__(self, state_dir: Path) -> None:
        path = Path(state_dir) / "coordinator.db"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (not a coordinator state dir)")
        self.dir = Path(state_dir)
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.lock:
            try:
                return self.db.execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise

    def meta(self, key: str) -> Any:
        rows = self.q("SELECT value FROM meta WHERE key=?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def counters(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.q("SELECT name, value FROM counters")}

    def nodes(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self.q("SELECT record FROM nodes ORDER BY node_id")]

    def leases(self) -> list[dict[str, Any]]:
        return [{"node_id": n, "deadline": d} for n, d in self.q("SELECT node_id, deadline FROM leases")]

    def update_stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for node, n, tok, nb, mean_s, max_s, last_t, dropped in self.q(
                "SELECT node_id, COUNT(*), SUM(tokens), SUM(nbytes), AVG(staleness), MAX(staleness), MAX(arrived),"
                " SUM(merged_into = -1) FROM updates GROUP BY node_id"):
            out[node] = {"uploads": n, "tokens": tok, "bytes_up": nb, "staleness_mean": mean_s,
                         "staleness_max": max_s, "last_accepted": last_t, "dropped": dropped or 0}
        for node, st in self.q("SELECT node_id, staleness FROM updates WHERE seq IN "
                               "(SELECT MAX(seq) FROM updates GROUP BY node_id)"):
            out[node]["staleness_last"] = st
        return out

    def energy_by_node(self) -> dict[str, dict[str, Any]]:
        out = {}
        for node, j, jm, ts, n, nm in self.q(
                "SELECT node_id, SUM(joules), SUM(CASE WHEN measured THEN joules ELSE 0 END), SUM(task_s), COUNT(*),"
                " SUM(measured) FROM energy GROUP BY node_id"):
            out[node] = {"joules": j or 0.0, "measured_joules": jm or 0.0, "task_s": ts or 0.0, "tasks": n,
                         "measured": True if nm == n else (False if not nm else "mixed"), "sources": []}
        for node, src in self.q("SELECT DISTINCT node_id, source FROM energy ORDER BY source"):
            out[node]["sources"].append(src)
        return out

    def val_curve(self) -> list[dict[str, Any]]:
        return [{"version": v, "tokens": t, "val_loss": loss, "time": tm}
                for v, t, loss, tm in self.q("SELECT version, tokens, val_loss, time FROM val_curve ORDER BY version")]

    def traffic(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.q("SELECT name, bytes FROM traffic")}

    def uploads(self) -> list[dict[str, Any]]:
        """Accepted uploads in arrival order (tokens, bytes, staleness, merged_into; -1 = dropped)."""
        cols = ("node_id", "tokens", "nbytes", "staleness", "arrived", "merged_into", "loss")
        return [dict(zip(cols, r, strict=True)) for r in self.q(f"SELECT {', '.join(cols)} FROM updates ORDER BY seq")]

    def energy_rows(self) -> list[dict[str, Any]]:
        cols = ("task_id", "node_id", "joules", "measured", "source", "task_s")
        return [dict(zip(cols, r, strict=True)) for r in self.q(f"SELECT {', '.join(cols)} FROM energy")]

    def events(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Events oldest first (with `limit`: the last `limit` of them)."""
        if limit is None:
            rows = self.q("SELECT id, time, kind, data FROM events ORDER BY id")
        else:
            rows = self.q("SELECT id, time, kind, data FROM events ORDER BY id DESC LIMIT ?", (limit,))[::-1]
        return [{"id": i, "time": t, "kind": k, "data": json.loads(d)} for i, t, k, d in rows]

    def last_problem(self) -> dict[str, float]:
        """Per node, the time of its last expired lease or too-stale refusal."""
        out: dict[str, float] = {}
        for node, t in self.q(
                "SELECT json_extract(data, '$.node_id'), MAX(time) FROM events WHERE kind = 'lease_expired' OR "
                "(kind = 'update_rejected' AND json_extract(data, '$.reason') = 'too_stale') GROUP BY 1"):
            if node:
                out[node] = t
        return out

    def end_time(self) -> float | None:
        rows = self.q("SELECT MAX(time) FROM events WHERE kind = 'run_done'")
        return rows[0][0] if rows else None


def live_snapshot(svc: Any) -> dict[str, Any]:
    """The in-memory parts of a running CoordinatorService (taken under its lock, quickly)."""
    with svc.lock:
        coord = svc.coord
        status = coord.status()
        nodes = [{k: getattr(n, k) for k in ("node_id", "registered_at", "last_seen", "tokens_accepted",
                                              "updates_accepted", "updates_rejected", "leases_expired",
                                              "reject_reasons", "banned", "ban_reason", "audits_passed",
                                              "audits_failed", "info")} for n in coord.nodes.values()]
        leases = [{"node_id": le.spec.node_id, "deadline": le.deadline} for le in coord.leases.values()]
    return {"status": status, "nodes": nodes, "leases": leases, "traffic": svc.traffic_pending(),
            "started_at": getattr(svc, "started_at", None)}


def _offline_status(db: RunDB, cc: dict[str, Any]) -> dict[str, Any]:
    c = db.counters()
    return {"run_id": cc.get("run_id"), "model_version": c.get("version", 0), "tokens": c.get("tokens_accepted", 0),
            "tokens_target": cc.get("tokens_target", 0), "updates_accepted": c.get("updates_accepted", 0),
            "updates_rejected": c.get("updates_rejected", 0), "updates_merged": c.get("updates_merged", 0),
            "outer_steps": c.get("outer_steps", 0), "leases_expired": c.get("leases_expired", 0),
            "reject_reasons": c.get("reject_reasons", {}), "done": bool(c.get("done", False))}


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


def token_series(uploads: list[dict[str, Any]], start: float | None, max_points: int = 300) -> list[list[float]]:
    """[[time, cumulative accepted tokens]] over accepted uploads (banned nodes' dropped updates excluded)."""
    pts, cum = ([[start, 0]] if start else []), 0
    for u in uploads:
        if u["merged_into"] != -1:
            cum += int(u["tokens"])
            pts.append([u["arrived"], cum])
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


def energy_summary(per_node: dict[str, dict[str, Any]], cost: EnergyCost | None = None) -> dict[str, Any]:
    cost = cost or EnergyCost()
    j = sum(e["joules"] for e in per_node.values())
    jm = sum(e["measured_joules"] for e in per_node.values())
    return {"joules": j, "kwh": cost.kwh(j), "measured_joules": jm, "estimated_joules": j - jm,
            "measured_share": jm / j if j > 0 else None, "co2_kg": cost.co2_kg(j), "cost_usd": cost.energy_usd(j),
            "sources": sorted({s for e in per_node.values() for s in e["sources"]}),
            "conversion": (f"assumption: {cost.co2_g_per_kwh:g} g CO2/kWh, ${cost.usd_per_kwh:g}/kWh, "
                           f"PUE {cost.pue:g}; energy of accepted updates as reported by the workers")}


def run_view(db: RunDB, now: float, live: dict[str, Any] | None = None, events: int = 40) -> dict[str, Any]:
    """One JSON-able dict with everything the dashboard page needs (see docs/OBSERVABILITY.md)."""
    fp = db.meta("fingerprint") or {}
    cc = fp.get("coordinator", {})
    lease_s, max_stale = float(cc.get("lease_s", 600.0)), int(cc.get("max_staleness", 8))
    status = live["status"] if live else _offline_status(db, cc)
    nodes = live["nodes"] if live else db.nodes()
    leases = live["leases"] if live else db.leases()
    done = bool(status.get("done"))
    uploads = db.uploads()
    # A finished run ends at its run_done event; a state dir without events: at its last accepted upload.
    end = (db.end_time() or max((float(u["arrived"]) for u in uploads), default=None)) if done else None
    at = min(now, end) if end else now  # node states of a finished run are judged at its end
    ustats, energy, problems = db.update_stats(), db.energy_by_node(), db.last_problem()
    held = {le["node_id"] for le in leases}
    start = min((float(n.get("registered_at", now)) for n in nodes), default=None)
    series = token_series(uploads, start)
    rate, window = throughput(series, at, done)
    traffic = db.traffic()
    for k, v in (live or {}).get("traffic", {}).items():
        traffic[k] = traffic.get(k, 0) + v
    cost = EnergyCost()
    rows, counts = [], {ACTIVE: 0, LAGGING: 0, DROPPED: 0, FINISHED: 0, GONE: 0}
    for n in nodes:
        nid = n["node_id"]
        us, en = ustats.get(nid, {}), energy.get(nid)
        state = node_state(n, nid in held, us.get("staleness_last"), problems.get(nid, 0.0),
                           us.get("last_accepted") or 0.0, at, lease_s, max_stale)
        counts[state] += 1
        shown = end_state(state) if done else state
        if done:
            counts[shown] += 1
        seen = float(n.get("last_seen", now))
        rows.append({
            "node_id": nid, "state": shown, "state_at_end": state if done else None,
            "tokens": n.get("tokens_accepted", 0),
            "accepted": n.get("updates_accepted", 0), "rejected": n.get("updates_rejected", 0),
            "reject_reasons": n.get("reject_reasons", {}), "leases_expired": n.get("leases_expired", 0),
            "staleness_mean": us.get("staleness_mean"), "staleness_last": us.get("staleness_last"),
            "staleness_max": us.get("staleness_max"), "bytes_up": us.get("bytes_up") or 0,
            "audits_passed": n.get("audits_passed", 0), "audits_failed": n.get("audits_failed", 0),
            "banned": bool(n.get("banned")), "ban_reason": n.get("ban_reason", ""),
            "energy_j": en["joules"] if en else None, "energy_kwh": cost.kwh(en["joules"]) if en else None,
            "energy_measured": en["measured"] if en else None, "energy_source": "; ".join(en["sources"]) if en else "",
            "task_s": en["task_s"] if en else None, "last_seen": n.get("last_seen"),
            "last_seen_ago_s": max(0.0, now - seen),
            "last_seen_before_end_s": max(0.0, end - seen) if end else None,
            "device": str((n.get("info") or {}).get("device", "")),
        })
    rows.sort(key=lambda r: (-r["tokens"], r["node_id"]))
    curve = db.val_curve()
    target = int(status.get("tokens_target") or cc.get("tokens_target") or 0)
    bytes_in_accepted = sum(int(u["nbytes"]) for u in uploads)
    return {
        "run_id": status.get("run_id") or cc.get("run_id"), "time": now, "done": done, "live": live is not None,
        "run_state": "finished" if done else "running", "started_at": start, "ended_at": end,
        "ended_ago_s": max(0.0, now - end) if end else None, "model": fp.get("model", {}), "codec": fp.get("codec"),
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
        "events": db.events(limit=events)[::-1],
    }
