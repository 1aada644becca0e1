"""Swarm scale: 1,000 virtual workers, fault-free vs 30% dropout + a slow tail, at equal accepted tokens.

    python bench/bench_swarm_scale.py                    # 3 seeds, writes bench/results/swarm_scale.md
    python bench/bench_swarm_scale.py --seeds 0 --set sim.tokens=1000000   # a quick look

Every row is `trainnet simulate --config bench/swarm.toml <flags> --set sim.seed=S`, run as its own process
(the shipped Api, engine and data plane, with real signatures, audits and merges; only sockets and the clock are
simulated). The quorum follows the active swarm (core/scaling.py: ceil(active / target_staleness)); the
"fixed quorum" row turns that off to show what it prevents. JSON per run under bench/results/runs/swarm/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from simrunner import curve_line, machine_line, mean_of, run_variants

HERE = Path(__file__).resolve().parent
# Tasks take ~1 s of virtual time here (10 steps x 0.1 s): the lag and the downtime are scaled to that.
FAULTS = ["--dropout", "0.3", "--set", "sim.speed_sigma=0.3", "--set", "sim.slow_fraction=0.25",
          "--set", "sim.slow_factor=0.25", "--set", "sim.lag_s=0.2", "--set", "sim.downtime_s=5.0"]
VARIANTS = {
    "fault_free": [],
    "faults": FAULTS,
    # Most of its updates are refused as stale, so reaching the full budget would cost many times the compute:
    # a tenth of the tokens shows the refusals (its loss is not comparable with the rows above).
    "fixed_quorum": FAULTS + ["--set", "consensus.target_staleness=0", "--set", "sim.tokens=400000"],
}
LABELS = {
    "fault_free": "fault-free",
    "faults": "30% of tasks dropped + slow tail (25% at 1/4 speed) + lag",
    "fixed_quorum": "... with the quorum fixed at 4 (no swarm scaling; 400k tokens, staleness only)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(HERE / "swarm.toml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["fault_free", "faults"])
    ap.add_argument("--contrast-seeds", type=int, nargs="*", default=[0],
                    help="seeds of the fixed-quorum contrast row (none: skip it)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra override for every run")
    ap.add_argument("--reuse", action="store_true", help="reuse JSON results already in --out")
    ap.add_argument("--out", default=str(HERE / "results" / "runs" / "swarm"))
    ap.add_argument("--table", default=str(HERE / "results" / "swarm_scale.md"))
    args = ap.parse_args()
    t0 = time.time()
    extra = [x for s in args.sets for x in ("--set", s)]
    by = run_variants(args.config, {v: VARIANTS[v] for v in args.variants}, args.seeds, Path(args.out),
                      args.jobs, extra, args.reuse)
    if args.contrast_seeds:
        by |= run_variants(args.config, {"fixed_quorum": VARIANTS["fixed_quorum"]}, args.contrast_seeds,
                           Path(args.out), args.jobs, extra, args.reuse)
    ff = mean_of(by["fault_free"], "final_val_loss") if by.get("fault_free") else None
    workers = by[args.variants[0]][0]["config"]["sim"]["workers"]
    lines = [
        f"# Swarm scale: {workers:,} virtual workers, fault-free vs faults, at equal accepted tokens",
        "",
        f"Command: `python bench/bench_swarm_scale.py {' '.join(sys.argv[1:])}`".replace(" `", "`") + "  ",
        f"Config: `bench/{Path(args.config).name}`, seeds {args.seeds}, overrides {args.sets or 'none'}.  ",
        machine_line(args.jobs) + f" Whole benchmark: {(time.time() - t0) / 60:.1f} min.",
        "",
        "Each run is the simulator driving the shipped coordinator (`Api`, engine, aggregator, signed versions; "
        "real ed25519 request signatures, audits with probation, the default robust rule and q2 updates). Every "
        "run trains the same accepted-token budget on a tiny model and is scored on the same held-out windows. "
        "'Stale' counts updates refused because more than `max_staleness` versions were published while they "
        "trained; its share is of all updates that arrived. The quorum grows to ceil(active nodes / "
        "target_staleness) (core/scaling.py); 'quorum' is its value at the end of the run.",
        "",
        "| run | val loss per seed | mean | vs fault-free | stale refused | stale share | outer steps | quorum "
        "| accepted | dropped tasks / expired leases | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in [*args.variants, *(["fixed_quorum"] if args.contrast_seeds else [])]:
        rs = by[v]
        m = mean_of(rs, "final_val_loss")
        per_seed = ", ".join(f"{r['final_val_loss']:.4f}" for r in rs)
        lines.append(
            f"| {LABELS[v]} | {per_seed} | {m:.4f} | "
            f"{f'{100 * (m / ff - 1):+.2f}%' if ff and v != 'fixed_quorum' else 'n/a'} | "
            f"{mean_of(rs, 'stale_refusals'):.0f} | {100 * mean_of(rs, 'stale_refusal_share'):.2f}% | "
            f"{mean_of(rs, 'outer_steps'):.0f} | {mean_of(rs, 'quorum_final'):.0f} | "
            f"{mean_of(rs, 'updates_accepted'):.0f} | {mean_of(rs, 'updates_dropped'):.0f} / "
            f"{mean_of(rs, lambda r: r.get('leases_expired', 0)):.0f} | {mean_of(rs, 'wall_s'):.0f} |")
    lines += ["", f"Validation loss against accepted tokens (seed {args.seeds[0]}):", ""]
    lines += [f"- {LABELS[v]}: {curve_line(by[v][0])}" for v in by]
    text = "\n".join(lines) + "\n"
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
