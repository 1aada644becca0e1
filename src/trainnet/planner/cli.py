"""`trainnet estimate`: project a full-size run (wall time, utilization, energy, CO2, cost) before renting GPUs.

    trainnet estimate                                   # reference: 7B, 2T tokens, 4,200 RTX 4090s
    trainnet estimate --gpu rtx3090 --tokens 140e9 --uplink-mbps 20 --h 1000 --json plan.json
    trainnet estimate --json - | jq .wall_days         # `--json -` (or a bare `--json`): JSON on stdout

Every figure printed is a projection (estimate) from the formulas in trainnet.planner.estimate; every
input is printed with its source, and values not given on the command line are labelled assumptions.
With the JSON on stdout, the tables go to stderr, so stdout is exactly one JSON document.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from trainnet.planner.assumptions import assumption_rows
from trainnet.planner.cli_dataplane import print_dataplane
from trainnet.planner.estimate import (
    Projection,
    Scenario,
    baseline_scenario,
    compute_only,
    default_bits_per_param,
    gpus_to_match,
    minimal_value,
    project,
    sweep,
    tokens_within,
)
from trainnet.planner.gpus import GPU_KINDS

_D = Scenario()


def _opt(name: str, default: object, help_: str, type_: object = float) -> click.Option:
    return click.option(name, default=default, show_default=True, type=type_, help=help_)


def _days(d: float | None) -> str:
    if d is None:
        return "-"
    return f"{d:.2f} d" if d >= 1 else f"{d * 24:.1f} h"


def _si(x: float) -> str:
    for unit, f in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.3g}{unit}"
    return f"{x:.3g}"


def _finite(x: object) -> object:
    """JSON-safe copy: infinities (a free link, an unlimited resource) become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


# The data plane's inputs (planner/dataplane.py); their sources are in assumptions.py.
_DATAPLANE_OPTIONS = [
    (
        "--data-bytes-per-token",
        "data_bytes_per_token",
        float,
        "training data per token, bytes (uint16 ids: 2)",
    ),
    ("--quorum", "quorum", int, "configured quorum (grows with the swarm)"),
    ("--target-staleness", "target_staleness", float, "quorum = max(quorum, ceil(gpus / this)); 0: fixed"),
    ("--max-staleness", "max_staleness", int, "staler updates are rejected (versions)"),
    ("--lease-s", "lease_s", float, "lease length; workers heartbeat every lease_s / 2"),
    ("--publish-bits-per-param", "publish_bits_per_param", float, "published delta per version (q4: 4.5)"),
    ("--full-every", "full_every", int, "a full checkpoint every this many versions"),
    ("--full-bits-per-param", "full_bits_per_param", float, "full checkpoint bits/param (bf16: 16)"),
    ("--full-fraction", "full_fraction", float, "share of rounds that start from a full checkpoint"),
    ("--store-gbps", "store_gbps", float, "object-store link, Gbit/s each direction"),
    ("--cdn-hit-ratio", "cdn_hit_ratio", float, "share of published-version downloads served by a CDN"),
    ("--store-read-latency-ms", "store_read_latency_ms", float, "latency of one aggregator range read, ms"),
    ("--coordinator-gbps", "coordinator_gbps", float, "control-plane (coordinator) link, Gbit/s"),
    ("--control-rps", "control_rps", float, "signed requests/s the control plane sustains"),
    ("--request-bytes", "request_bytes", float, "bytes of one request and its reply"),
    ("--manifest-entry-bytes", "manifest_entry_bytes", float, "bytes per blob listed in a version reply"),
    ("--aggregator-shards", "aggregator_shards", int, "aggregator processes (parameter ranges)"),
    ("--aggregator-cores", "aggregator_cores", int, "cores per aggregator shard"),
    ("--aggregator-gbps", "aggregator_gbps", float, "each aggregator's link to the object store, Gbit/s"),
]


def _dataplane_options(f: object) -> object:
    for flag, field, type_, help_ in reversed(_DATAPLANE_OPTIONS):
        f = click.option(flag, field, default=getattr(_D, field), show_default=True, type=type_, help=help_)(
            f
        )
    return click.option(
        "--dataplane/--no-dataplane",
        default=_D.dataplane,
        show_default=True,
        help="model the object store, aggregators and control plane (off: workers only)",
    )(f)


def _summary(p: Projection) -> dict:
    return {k: getattr(p, k) for k in ("wall_days", "utilization", "energy_kwh", "co2_kg", "cost_usd")}


@click.command("estimate")
@_opt("--params", _D.params, "model parameters N")
@_opt("--tokens", _D.tokens, "training tokens D")
@_opt("--gpus", _D.gpus, "number of worker GPUs", int)
@click.option(
    "--gpu", default=_D.gpu, show_default=True, type=click.Choice(sorted(GPU_KINDS)), help="GPU kind"
)
@_opt("--peak-flops", None, "override peak dense BF16 FLOP/s of the GPU")
@_opt("--power-w", None, "override board power (W)")
@_opt("--usd-per-gpu-hour", None, "override rental price per GPU-hour")
@_opt("--mfu", _D.mfu, "model FLOPs utilization while computing")
@_opt("--tokens-per-step", _D.tokens_per_step, "tokens per inner step per GPU (batch)")
@_opt("--h", _D.h, "inner steps per round (H)", int)
@_opt("--uplink-mbps", _D.uplink_mbps, "worker uplink, Mbit/s")
@_opt("--downlink-mbps", _D.downlink_mbps, "worker downlink, Mbit/s")
@_opt("--bits-per-param", None, "upload bits per parameter per round [default: codec table, else 2.5 (q2)]")
@_opt(
    "--download-bits-per-param",
    None,
    "download bits per parameter per round [default: derived from the published versions]",
)
@_opt("--dropout", _D.dropout, "fraction of rounds lost to dropouts")
@click.option(
    "--overlap/--no-overlap",
    default=_D.overlap,
    show_default=True,
    help="hide communication behind the next round's compute",
)
@_opt("--idle-power-fraction", _D.idle_power_fraction, "fraction of board power drawn while waiting")
@_opt("--pue", _D.pue, "power usage effectiveness of the workers' sites")
@_opt("--co2-g-per-kwh", _D.co2_g_per_kwh, "grid carbon intensity, g CO2/kWh")
@_opt("--usd-per-kwh", _D.usd_per_kwh, "electricity price, $/kWh")
@click.option(
    "--include-energy-cost/--no-include-energy-cost",
    default=_D.include_energy_cost,
    show_default=True,
    help="add electricity to the GPU-hour cost",
)
@_opt("--baseline-gpus", 512, "data-center baseline: number of GPUs", int)
@click.option("--baseline-gpu", default="h100", show_default=True, type=click.Choice(sorted(GPU_KINDS)))
@_opt("--baseline-mfu", 0.40, "data-center baseline MFU")
@_opt("--baseline-pue", 1.2, "data-center baseline PUE")
@_opt("--target-days", 11.0, "wall-time target for the 'what reaches it' section")
@click.option(
    "--codec-table",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="measured codec table [default: bench/results/codecs.md if present]",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    is_flag=False,
    flag_value="-",
    help="write the projection as JSON to this file; '-' or no value: to stdout (tables then go to stderr)",
)
@click.option(
    "--sweep/--no-sweep",
    default=False,
    help="also print, for several H, the minimal uplink that reaches --target-days",
)
@_dataplane_options
@click.pass_context
def estimate_cmd(ctx: click.Context, **kw: object) -> None:
    """Project a run on many GPUs over the internet against a data-center baseline (all estimates)."""
    given = {name for name in kw if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    bits, bits_source = default_bits_per_param(kw["codec_table"])
    if kw["bits_per_param"] is not None:
        bits, bits_source = float(kw["bits_per_param"]), "given on the command line"
    fields = {f for f in asdict(_D)}
    s = replace(
        _D, **{k: v for k, v in kw.items() if k in fields and k != "bits_per_param"}, bits_per_param=bits
    )
    base = baseline_scenario(
        s, gpus=kw["baseline_gpus"], gpu=kw["baseline_gpu"], mfu=kw["baseline_mfu"], pue=kw["baseline_pue"]
    )
    try:
        p, b = project(s), project(base)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    target = float(kw["target_days"])
    rows = assumption_rows(s, base, bits_source, given)
    tgt = _target_section(s, p, target)
    tgt["baseline_gpus_to_match_wall_time"] = gpus_to_match(base, p.wall_days)
    report = _report(s, base, p, b, rows, tgt)
    to_stdout = kw["json_path"] == "-"
    con = Console(stderr=to_stdout)  # stdout carries only the JSON then
    _print(con, s, p, b, rows, tgt)
    if kw["sweep"]:
        report["sweep"] = sweep(s, target)
        _print_sweep(con, s, report["sweep"], target)
    if kw["json_path"] is not None:
        # allow_nan=False: the file must be strict JSON (no Infinity); inputs are sanitized above.
        text = json.dumps(_finite(report), indent=2, allow_nan=False)
        if to_stdout:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        else:
            Path(kw["json_path"]).write_text(text)


def _target_section(s: Scenario, p: Projection, target: float) -> dict:
    return {
        "target_days": target,
        "meets_target": p.wall_days <= target,
        "compute_only_days": project(compute_only(s)).wall_days,
        "min_uplink_mbps": minimal_value(s, "uplink_mbps", target),
        "min_h": minimal_value(s, "h", target),
        "min_gpus": minimal_value(s, "gpus", target, hi=1e8),
        "tokens_within_target": tokens_within(s, target),
    }


def _report(s: Scenario, base: Scenario, p: Projection, b: Projection, rows: list, tgt: dict) -> dict:
    r = s.resolved()
    out = {
        "label": "estimate: projection from the planner model, not a measurement",
        **_summary(p),
        "bound": p.bound,
        "params": r.params,
        "tokens": r.tokens,
        "gpus": r.gpus,
        "gpu": r.gpu,
        "gpu_peak_flops": r.peak_flops,
        "projection": p.to_dict(),
        "inputs": {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(r).items()},
        "baseline": {
            **_summary(b),
            "gpus": base.gpus,
            "gpu": base.gpu,
            "gpu_peak_flops": base.resolved().peak_flops,
            "mfu": base.mfu,
            "pue": base.pue,
            "projection": b.to_dict(),
        },
        "target": tgt,
        "assumptions": [asdict(a) for a in rows],
    }
    return out


def _print(con: Console, s: Scenario, p: Projection, b: Projection, rows: list, tgt: dict) -> None:
    b_kind = next(a.value for a in rows if a.name == "baseline_gpu")
    at = Table(title="Assumptions (inputs and their sources)")
    for c in ("name", "value", "source"):
        at.add_column(c, overflow="fold")
    for a in rows:
        at.add_row(a.name, a.value, a.source)
    con.print(at)

    t = Table(title="Projection (all figures are estimates)")
    t.add_column("quantity")
    t.add_column(f"swarm: {s.gpus} x {s.gpu}", justify="right")
    t.add_column("baseline: data center", justify="right")
    t.add_row("compute per round", f"{p.compute_s:,.0f} s", f"{b.compute_s:.2f} s/step")
    t.add_row("upload + download per round", f"{p.upload_s:,.0f} + {p.download_s:,.0f} s", "in MFU")
    t.add_row("utilization", f"{p.utilization:.1%}", f"{b.utilization:.0%} (comm in MFU)")
    t.add_row("tokens per round per GPU", _si(p.tokens_per_round), _si(b.tokens_per_round))
    t.add_row("rounds per GPU / updates merged", f"{p.rounds_per_gpu:,.1f} / {p.total_updates:,.0f}", "-")
    t.add_row("bound (slowest term)", p.bound, "compute (sync, in MFU)")
    t.add_row("wall time", _days(p.wall_days), _days(b.wall_days))
    t.add_row("GPU-hours", f"{p.gpu_hours:,.0f}", f"{b.gpu_hours:,.0f}")
    t.add_row("energy", f"{p.energy_kwh:,.0f} kWh", f"{b.energy_kwh:,.0f} kWh")
    t.add_row("CO2", f"{p.co2_kg / 1000:,.2f} t", f"{b.co2_kg / 1000:,.2f} t")
    t.add_row("electricity cost", f"${p.energy_cost_usd:,.0f}", f"${b.energy_cost_usd:,.0f}")
    t.add_row(
        "cost (GPU-hours" + (" + energy)" if s.include_energy_cost else ")"),
        f"${p.cost_usd:,.0f}",
        f"${b.cost_usd:,.0f}",
    )
    con.print(t)
    print_dataplane(con, s, p)
    con.print(
        f"Baseline GPUs ({b_kind}) needed to match the swarm's wall time: {tgt['baseline_gpus_to_match_wall_time']:,.0f}"
    )

    if p.fits_in_memory is False:
        con.print(
            f"[yellow]memory: training state needs ~{p.memory_needed_gb:.0f} GB (16 B/param, no "
            f"activations) but a {s.gpu} has {p.memory_gb:.0f} GB: this needs CPU offload or sharding "
            f"across GPUs, which lowers the MFU you should assume.[/yellow]"
        )
    target = tgt["target_days"]
    verdict = "meets" if tgt["meets_target"] else "misses"
    con.print(
        f"Target {target:g} days: this scenario {verdict} it ({_days(p.wall_days)}; compute alone, "
        f"free links: {_days(tgt['compute_only_days'])})."
    )
    up, h, g = tgt["min_uplink_mbps"], tgt["min_h"], tgt["min_gpus"]
    con.print(f"  minimal uplink at H={s.h}: " + (f"{up:.3g} Mbit/s" if up else "none is enough"))
    con.print(f"  minimal H at {s.uplink_mbps:g} Mbit/s up: " + (f"{h}" if h else "none is enough"))
    con.print("  minimal GPUs at these settings: " + (f"{g:,}" if g else "none is enough"))
    con.print(f"  tokens these settings process in {target:g} days: {_si(tgt['tokens_within_target'])}")


def _print_sweep(con: Console, s: Scenario, rows: list[dict], target: float) -> None:
    t = Table(
        title=f"Minimal uplink reaching {target:g} days, per H (downlink {s.downlink_mbps:g} Mbit/s; estimates)"
    )
    for c in ("H", "min uplink", "wall time", "utilization", "compute-only wall"):
        t.add_column(c, justify="right")
    for r in rows:
        up = r["min_uplink_mbps"]
        t.add_row(
            str(r["h"]),
            f"{up:.3g} Mbit/s" if up is not None else "none is enough",
            _days(r["wall_days"]),
            f"{r['utilization']:.1%}" if r["utilization"] is not None else "-",
            _days(r["compute_only_days"]),
        )
    con.print(t)
