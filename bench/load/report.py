"""Figures of one load level (summarize) and the Markdown table of several runs (render)."""

from __future__ import annotations

from collections import Counter
from typing import Any

KINDS = ("lease", "heartbeat", "upload")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def latency(samples: list[Any]) -> dict[str, Any]:
    ms = [s.ms for s in samples]
    return {"n": len(ms), "p50_ms": pct(ms, 0.50), "p95_ms": pct(ms, 0.95), "p99_ms": pct(ms, 0.99),
            "max_ms": max(ms) if ms else None}


def errors(samples: list[Any]) -> dict[str, Any]:
    """Counts over every request: 4xx / 429 / 5xx replies, timeouts and other transport errors, by code."""
    c: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for s in samples:
        if s.status == 0:
            c["timeouts" if s.error == "timeout" else "transport"] += 1
            codes[f"{s.kind}:{s.error}"] += 1
        elif s.status == 429:
            c["429"] += 1
        elif 400 <= s.status < 500:
            c["4xx"] += 1
            codes[f"{s.kind}:{s.status}:{s.error}"] += 1
        elif s.status >= 500:
            c["5xx"] += 1
            codes[f"{s.kind}:{s.status}:{s.error}"] += 1
    return {"4xx": c["4xx"], "429": c["429"], "5xx": c["5xx"], "timeouts": c["timeouts"],
            "transport": c["transport"], "by_code": dict(codes)}


def summarize(n: int, reg_s: float, reg: list[Any], steady: list[Any], warmup_s: float, seconds: float,
              window: dict[str, Any], op: dict[str, Any]) -> dict[str, Any]:
    measured = [s for s in steady if s.start >= warmup_s]
    span = max(window["t1"] - window["t0"], 1e-9)
    accepted = [s for s in steady if s.kind == "upload" and s.accepted and warmup_s <= s.end <= seconds]
    leases = [s for s in measured if s.kind == "lease"]
    out: dict[str, Any] = {
        "nodes": n, "register_s": reg_s, "register": latency(reg),
        "window_s": seconds - warmup_s,
        "accepted_per_s": len(accepted) / max(seconds - warmup_s, 1e-9),
        "requests_per_s": len(measured) / max(seconds - warmup_s, 1e-9),
        "tasks_handed_per_s": sum(1 for s in leases if s.task) / max(seconds - warmup_s, 1e-9),
        "errors": errors(reg + steady),
        "coordinator": {"rss_mib": window["coord1"]["rss_mib"], "rss_peak_mib": window["coord1"]["rss_peak_mib"],
                        "cpu_cores": (window["coord1"]["cpu_s"] - window["coord0"]["cpu_s"]) / span},
        "loadgen_cpu_cores": (window["self1"] - window["self0"]) / span,
        "persistence": op.get("persistence", {}),
        "status": {k: op.get(k) for k in ("model_version", "updates_accepted", "updates_rejected", "quorum",
                                          "nodes", "nodes_active", "leases_active", "leases_expired",
                                          "reject_reasons")},
    }
    for kind in KINDS:
        out[kind] = latency([s for s in measured if s.kind == kind])
    return out


def _f(v: Any, fmt: str = "{:.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def render(docs: list[dict[str, Any]]) -> str:
    head = ("| store | nodes | register all (s) | lease p50/p95/p99 ms | heartbeat p50/p95/p99 ms | "
            "upload p50/p95/p99 ms | accepted upd/s | req/s | 4xx/429/5xx/timeouts | coord RSS MiB | "
            "coord CPU cores | loadgen CPU cores | commit ms p50/p99 | rows/commit | ms/row |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for doc in docs:
        store = "PostgreSQL" if str(doc.get("db", "")).startswith("postgres") else "SQLite"
        for r in doc["levels"]:
            lat = ["/".join(_f(r[k][q]) for q in ("p50_ms", "p95_ms", "p99_ms")) for k in KINDS]
            e, p, c = r["errors"], r["persistence"], r["coordinator"]
            ms_row = (p.get("ms_mean") / p["rows_per_commit"]) if p.get("rows_per_commit") else None
            lines.append(
                f"| {store} | {r['nodes']:,} | {r['register_s']:.1f} | {lat[0]} | {lat[1]} | {lat[2]} | "
                f"{r['accepted_per_s']:.1f} | {r['requests_per_s']:.0f} | "
                f"{e['4xx']}/{e['429']}/{e['5xx']}/{e['timeouts'] + e['transport']} | {c['rss_mib']:.0f} | "
                f"{c['cpu_cores']:.2f} | {r['loadgen_cpu_cores']:.2f} | "
                f"{_f(p.get('ms_p50'), '{:.1f}')}/{_f(p.get('ms_p99'), '{:.1f}')} | "
                f"{_f(p.get('rows_per_commit'), '{:.1f}')} | {_f(ms_row, '{:.2f}')} |")
    return "\n".join(lines)
