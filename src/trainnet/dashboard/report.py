"""`trainnet report`: plots and a summary of a finished (or running) run, as self-contained HTML + Markdown.

    trainnet report trainnet-demo/coordinator                  # a coordinator state dir
    trainnet report out.json --baseline sync.json              # a `trainnet simulate --json` result
    trainnet report STATE --out report/ --usd-per-kwh 0.30

Writes OUT/report.html (PNGs embedded as base64, opens offline), OUT/report.md and OUT/plots/*.png:
loss vs tokens (with the synchronous baseline when given, or when the JSON is itself a sync run),
loss vs time, bytes per node, node timeline (active/lagging/dropped), contributions, energy and cost.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

import click

from trainnet.dashboard.data import run_view
from trainnet.dashboard.timeline import timeline_from_events, timeline_from_sim
from trainnet.energy.cost import EnergyCost

CAPTIONS = {
    "loss_tokens": "Loss vs accepted tokens",
    "loss_time": "Loss vs time",
    "bytes_per_node": "Bytes per node",
    "node_timeline": "Node timeline",
    "contributions": "Contributions",
    "energy_cost": "Energy and cost",
}


def _curve_from_json(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"tokens": p["tokens"], "val_loss": p["val_loss"]} for p in result.get("curve", [])]


def open_run_store(state: Path | str) -> Any:
    """The state store of a run: a coordinator state dir (its coordinator.db) or a store URL."""
    from trainnet.store.state import open_state_store

    text = str(state)
    if text.startswith(("postgresql://", "postgres://", "sqlite:///")):
        return open_state_store(text)
    path = Path(state) / "coordinator.db"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (not a coordinator state dir)")
    return open_state_store(f"sqlite:///{path.resolve()}")


def load_state_dir(state: Path, cost: EnergyCost) -> dict[str, Any]:
    """Normalized report data of a coordinator run (read-only)."""
    store = open_run_store(state)
    try:
        view = run_view(store, time.time(), events=20)
        fp = store.get_meta("fingerprint") or {}
        cc = fp.get("coordinator", {})
        start = view["started_at"] or time.time()
        events, after = [], 0
        while batch := store.events_since(after, 10_000):
            events += batch
            after = batch[-1]["id"]
        end = view["ended_at"] or max([e["time"] for e in events] + [start])
        uploads = sorted((u for u in store.log_list("updates", limit=1_000_000) if u.get("merged_into", 0) != -1),
                         key=lambda u: u["arrived"])
        cum, train = 0, []
        for u in uploads:
            cum += u["tokens"]
            if u.get("loss") is not None:
                train.append((cum, u["loss"]))
        tl = timeline_from_events(events, float(cc.get("lease_s", 600.0)), int(cc.get("max_staleness", 8)),
                                  start, end)
    finally:
        store.close()
    e = view["energy"]
    jm, j = e["measured_joules"], e["joules"]
    e.update(kwh=cost.kwh(j), co2_kg=cost.co2_kg(j), cost_usd=cost.energy_usd(j))
    energy_label = ("not reported" if j == 0 else "measured" if jm == j else "estimate" if jm == 0
                    else f"{100 * jm / j:.0f}% measured, rest estimated")
    u = view["updates"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(u["reject_reasons"].items()))
    last = view["val_curve"][-1] if view["val_curve"] else None
    summary = [
        ("run", view["run_id"], "done" if view["done"] else "not finished"),
        ("model", f"v{view['model_version']}", f"{u['outer_steps']} outer steps; {fp.get('model', {})}"),
        ("tokens accepted", f"{view['tokens']:,}", f"target {view['tokens_target']:,}"),
        ("held-out loss", f"{last['val_loss']:.4f}" if last else "-",
         f"measured by the coordinator at v{last['version']}" if last else "no evaluation stored"),
        ("updates", f"{u['updates_accepted']} accepted, {u['updates_rejected']} rejected", reasons or "-"),
        ("audits", f"{view['audits']['passed']} passed, {view['audits']['failed']} failed",
         f"{view['nodes']['banned']} node(s) banned"),
        ("nodes", f"{view['nodes']['total']}", "states at the end: " + ", ".join(
            f"{view['nodes'][s]} {s}" for s in ("active", "lagging", "dropped"))),
        ("bytes in", f"{view['bytes']['in_total']:,} B", "update uploads received"),
        ("bytes out", f"{view['bytes']['out_total']:,} B",
         ", ".join(f"{k} {v:,}" for k, v in sorted(view["bytes"]["by_kind"].items()) if k != "update_in")),
        ("wall time", f"{end - start:,.0f} s", "first registration to the end of the run (or the last event)"),
        ("energy", f"{j:,.1f} J = {e['kwh']:.6f} kWh", f"{energy_label}; " + "; ".join(e["sources"])),
        ("CO2, cost", f"{e['co2_kg'] * 1000:.3g} g, ${e['cost_usd']:.3g}",
         f"assumption: {cost.co2_g_per_kwh:g} g/kWh, ${cost.usd_per_kwh:g}/kWh, PUE {cost.pue:g}"),
    ]
    return {
        "kind": "coordinator", "title": f"TrainNet run {view['run_id']}", "summary": summary,
        "val_curve": [{**p, "time_s": p["time"] - start} for p in view["val_curve"]],
        "curve_label": "held-out loss (coordinator evaluation)", "train_loss": train,
        "time_label": "wall seconds since the first node registered", "nodes": view["contributors"],
        "bytes_note": "accepted updates, as received", "timeline": tl, "energy": e,
        "events": view["events"],
    }


def load_sim_json(path: Path) -> dict[str, Any]:
    """Normalized report data of a `trainnet simulate --json` result (async or sync)."""
    r = json.loads(Path(path).read_text())
    if not isinstance(r, dict) or "curve" not in r:
        raise click.ClickException(f"{path}: not a `trainnet simulate --json` result (no 'curve')")
    algo = r.get("algo", "async")
    sim_time = "sim_time_s" in (r["curve"][0] if r["curve"] else {})
    curve = [{"tokens": p["tokens"], "val_loss": p["val_loss"],
              "time_s": p.get("sim_time_s") if sim_time else p.get("wall_s")} for p in r["curve"]]
    nodes = [{"node_id": n["node_id"], "tokens": n.get("tokens_accepted", 0), "accepted": n.get("tasks_done", 0),
              "rejected": n.get("tasks_lost", 0), "bytes_up": n.get("bytes_up", 0),
              "banned": n["node_id"] in set(r.get("banned_nodes") or []), "energy_j": None}
             for n in r.get("nodes", [])]
    summary = [
        ("simulation", algo, f"{r.get('config', {}).get('name', '')}; seed {r.get('config', {}).get('sim', {}).get('seed')}"),
        ("final held-out loss", f"{r['final_val_loss']:.4f}", "measured in the simulation"),
        ("tokens accepted", f"{r['tokens']:,}", f"computed {r.get('tokens_computed', r['tokens']):,}"),
        ("updates", f"{r.get('updates_accepted')} accepted, {r.get('updates_rejected')} rejected",
         f"{r.get('updates_dropped', 0)} lost in flight"),
        ("bytes up per worker", f"{r.get('bytes_up_per_worker', 0):,.0f} B",
         f"DDP would send {r.get('ddp_bytes_up_per_worker', 0):,.0f} B"),
        ("energy", "-", "not metered in simulation (see trainnet estimate for a projection)"),
    ]
    if "sim_time_s" in r:
        summary.append(("simulated time", f"{r['sim_time_s']:,.0f} s", f"computed in {r.get('wall_s', 0):.1f} s wall"))
    data = {
        "kind": "simulation", "title": f"TrainNet simulation ({algo})", "summary": summary, "val_curve": curve,
        "curve_label": f"held-out loss ({algo})", "nodes": nodes, "bytes_note": "serialized uploads",
        "time_label": "simulated seconds" if sim_time else "wall seconds (synchronous baseline)",
        "timeline": timeline_from_sim(r.get("nodes", []), float(r.get("sim_time_s") or 0.0)) if sim_time else None,
        "energy": None,
    }
    if algo == "sync":
        data["baseline"], data["baseline_label"] = _curve_from_json(r), "synchronous baseline (this run)"
    return data


def load_source(source: Path, baseline: Path | None = None, cost: EnergyCost | None = None) -> dict[str, Any]:
    """A state dir (holding coordinator.db) or a simulator JSON file, plus an optional sync baseline JSON."""
    source = Path(source)
    cost = cost or EnergyCost()
    if source.is_dir():
        data = load_state_dir(source, cost)
    elif source.is_file():
        data = load_sim_json(source)
    else:
        raise click.ClickException(f"{source}: no such state dir or JSON file")
    if baseline is not None:
        b = json.loads(Path(baseline).read_text())
        data["baseline"] = _curve_from_json(b)
        data["baseline_label"] = f"{b.get('algo', 'baseline')} baseline ({Path(baseline).name})"
    return data


def write_report(data: dict[str, Any], out: Path) -> dict[str, Path]:
    """Plots into out/plots, then out/report.html (self-contained) and out/report.md; returns the paths."""
    from trainnet.dashboard.plots import make_plots

    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(data, out / "plots")
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(str(a))}</th><td>{esc(str(b))}</td><td class=n>{esc(str(c))}</td></tr>"
                   for a, b, c in data["summary"])
    figs = "".join(
        f"<figure><img alt='{esc(CAPTIONS[k])}' src='data:image/png;base64,"
        f"{base64.b64encode(p.read_bytes()).decode()}'><figcaption>{esc(CAPTIONS[k])}</figcaption></figure>"
        for k, p in plots.items())
    missing = [CAPTIONS[k] for k in CAPTIONS if k not in plots]
    note = f"<p class=n>Not drawn (no data): {esc(', '.join(missing))}.</p>" if missing else ""
    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(data['title'])}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;max-width:1000px;margin:24px auto;color:#1d2330;padding:0 16px}}
table{{border-collapse:collapse;margin:12px 0}}th,td{{text-align:left;padding:4px 10px;border-bottom:1px solid #e2e5eb}}
.n{{color:#6b7385;font-size:12px}}figure{{margin:16px 0}}img{{max-width:100%}}figcaption{{color:#6b7385}}</style>
</head><body><h1>{esc(data['title'])}</h1>
<p class=n>Generated {esc(time.strftime('%Y-%m-%d %H:%M:%S'))} by <code>trainnet report</code>. Figures are counted
or measured by the coordinator or the simulator; energy is reported by the workers and labelled measured or
estimate; CO2 and cost use assumed factors.</p>
<table>{rows}</table>{figs}{note}</body></html>"""
    (out / "report.html").write_text(page)
    md = [f"# {data['title']}", "", "| | | |", "|---|---|---|"]
    md += [f"| {a} | {b} | {c} |" for a, b, c in data["summary"]]
    md += [""] + [f"![{CAPTIONS[k]}](plots/{p.name})" for k, p in plots.items()]
    if missing:
        md += ["", f"Not drawn (no data): {', '.join(missing)}."]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return {"html": out / "report.html", "md": out / "report.md", **plots}


@click.command("report")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--baseline", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A `trainnet simulate --algo sync --json` result to draw as the synchronous baseline.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: SOURCE/report for a state dir, SOURCE-report/ for a JSON file).")
@click.option("--usd-per-kwh", type=click.FloatRange(min=0), default=0.15, show_default=True,
              help="Electricity price (an assumption, used for the cost figure).")
@click.option("--co2-g-per-kwh", type=click.FloatRange(min=0), default=480.0, show_default=True,
              help="Grid carbon intensity (an assumption).")
def report_cmd(source: Path, baseline: Path | None, out_dir: Path | None, usd_per_kwh: float,
               co2_g_per_kwh: float) -> None:
    """Write an HTML + Markdown report with plots of a coordinator state dir or a simulation JSON."""
    cost = EnergyCost(co2_g_per_kwh=co2_g_per_kwh, usd_per_kwh=usd_per_kwh)
    data = load_source(source, baseline, cost)
    out = out_dir or (source / "report" if source.is_dir() else source.with_name(source.stem + "-report"))
    paths = write_report(data, out)
    for label, value, note in data["summary"]:
        click.echo(f"  {label:<20} {value}  ({note})" if note else f"  {label:<20} {value}")
    click.echo(f"wrote {paths['html']} and {paths['md']} ({len(paths) - 2} plots in {out / 'plots'})")
