"""The report's figures (matplotlib, Agg backend: no display needed), each saved as a PNG.

    paths = make_plots(data, out_dir / "plots")     # {"loss_tokens": Path(...png), ...}

`data` is the normalized report data of `trainnet.dashboard.report.load_source` (a coordinator state
dir or a simulator JSON). A figure whose data is missing is not drawn (the report says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no GUI backend, works headless and in threads
import matplotlib.pyplot as plt  # noqa: E402

STATE_COLORS = {"active": "#1f9d55", "lagging": "#d48806", "dropped": "#b8bcc6"}
BLUE, GREY, ORANGE = "#2f6fde", "#6b7385", "#d48806"


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fig(w: float = 7.0, h: float = 3.8) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=(w, h))
    ax.grid(True, color="#e6e8ee", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def loss_vs_tokens(data: dict[str, Any], path: Path) -> Path | None:
    curve, base = data["val_curve"], data.get("baseline")
    if not curve:
        return None
    fig, ax = _fig()
    ax.plot([p["tokens"] for p in curve], [p["val_loss"] for p in curve], "-o", ms=3, color=BLUE,
            label=data.get("curve_label", "held-out loss"))
    if base:
        ax.plot([p["tokens"] for p in base], [p["val_loss"] for p in base], "--", color=GREY,
                label=data.get("baseline_label", "synchronous baseline"))
    train = data.get("train_loss")
    if train:
        ax.plot([p[0] for p in train], [p[1] for p in train], ".", ms=3, color=ORANGE, alpha=0.6,
                label="training loss of each update (reported by its worker)")
    ax.set_xlabel("accepted tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Loss vs tokens")
    ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)


def loss_vs_time(data: dict[str, Any], path: Path) -> Path | None:
    pts = [p for p in data["val_curve"] if p.get("time_s") is not None]
    if not pts:
        return None
    fig, ax = _fig()
    ax.plot([p["time_s"] for p in pts], [p["val_loss"] for p in pts], "-o", ms=3, color=BLUE)
    ax.set_xlabel(data.get("time_label", "seconds since start"))
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("Loss vs time")
    return _save(fig, path)


def _barh(ax: Any, labels: list[str], values: list[float], colors: Any = BLUE) -> None:
    y = range(len(labels))
    ax.barh(list(y), values, color=colors)
    ax.set_yticks(list(y), labels, fontsize=8, family="monospace")
    ax.invert_yaxis()


def bytes_per_node(data: dict[str, Any], path: Path) -> Path | None:
    rows = data["nodes"]
    if not rows:
        return None
    fig, ax = _fig(7.0, 1.2 + 0.32 * len(rows))
    _barh(ax, [r["node_id"] for r in rows], [r["bytes_up"] / 1e6 for r in rows])
    ax.set_xlabel("MB uploaded (" + data.get("bytes_note", "accepted updates, as received") + ")")
    ax.set_title("Bytes per node")
    return _save(fig, path)


def contributions(data: dict[str, Any], path: Path) -> Path | None:
    rows = data["nodes"]
    if not rows:
        return None
    fig, ax = _fig(7.0, 1.2 + 0.32 * len(rows))
    colors = ["#d64545" if r.get("banned") else BLUE for r in rows]
    _barh(ax, [r["node_id"] for r in rows], [r["tokens"] for r in rows], colors)
    for i, r in enumerate(rows):
        note = f" {r['accepted']} ok / {r['rejected']} rejected" + (" BANNED" if r.get("banned") else "")
        ax.text(r["tokens"], i, note, va="center", fontsize=7, color=GREY)
    ax.set_xlabel("accepted tokens")
    ax.set_title("Contributions (red: banned)")
    ax.margins(x=0.3)
    return _save(fig, path)


def node_timeline(data: dict[str, Any], path: Path) -> Path | None:
    tl = data.get("timeline")
    if not tl or not tl["spans"]:
        return None
    nodes = list(tl["spans"])
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.0, 2.2 + 0.3 * len(nodes)), sharex=True,
                                  gridspec_kw={"height_ratios": [max(1, len(nodes)), 3]})
    for i, node in enumerate(nodes):
        for start, end, state in tl["spans"][node]:
            ax.broken_barh([(start, max(end - start, 1e-9))], (i - 0.35, 0.7), color=STATE_COLORS[state])
    ax.set_yticks(range(len(nodes)), nodes, fontsize=8, family="monospace")
    ax.invert_yaxis()
    ax.set_title("Node timeline (green active, amber lagging, grey dropped)")
    t, counts = tl["t"], tl["counts"]
    ax2.stackplot(t, [counts[s] for s in STATE_COLORS], colors=list(STATE_COLORS.values()),
                  labels=list(STATE_COLORS))
    ax2.set_ylabel("nodes")
    ax2.set_xlabel(data.get("time_label", "seconds since start"))
    ax2.legend(fontsize=7, loc="lower right", ncol=3, framealpha=0.9)
    return _save(fig, path)


def energy_cost(data: dict[str, Any], path: Path) -> Path | None:
    rows = [r for r in data["nodes"] if r.get("energy_j") is not None]
    if not rows:
        return None
    fig, ax = _fig(7.0, 1.5 + 0.32 * len(rows))
    colors = [BLUE if r["energy_measured"] is True else ORANGE for r in rows]
    _barh(ax, [r["node_id"] for r in rows], [r["energy_j"] / 3.6e3 for r in rows], colors)
    e = data["energy"]
    ax.set_xlabel("Wh (blue: measured, orange: estimate)")
    ax.set_title(f"Energy and cost: {e['kwh']:.6f} kWh, ~{e['co2_kg'] * 1000:.3g} g CO2, "
                 f"~${e['cost_usd']:.3g} (assumed factors)", fontsize=9)
    return _save(fig, path)


PLOTS = {"loss_tokens": loss_vs_tokens, "loss_time": loss_vs_time, "bytes_per_node": bytes_per_node,
         "node_timeline": node_timeline, "contributions": contributions, "energy_cost": energy_cost}


def make_plots(data: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Draw every figure that has data; returns name -> PNG path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fn in PLOTS.items():
        p = fn(data, out_dir / f"{name}.png")
        if p is not None:
            paths[name] = p
    return paths
