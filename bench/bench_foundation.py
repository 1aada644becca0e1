"""Foundation benchmark: fault-free async vs 30% dropout + slow tail vs the sync baseline, at equal tokens.

    python bench/bench_foundation.py                  # 3 seeds, writes bench/results/foundation.md
    python bench/bench_foundation.py --seeds 0 --set sim.tokens=500000   # a quick look

Every row is `trainnet simulate --config bench/standard.toml <flags> --set sim.seed=S`, run as its own
process; the table is built from the JSON each run wrote (kept under bench/results/runs/foundation/).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from simrunner import curve_line, machine_line, mean_of, run_variants

HERE = Path(__file__).resolve().parent
FAULTS = ["--dropout", "0.3", "--set", "sim.speed_sigma=0.3", "--set", "sim.slow_fraction=0.25",
          "--set", "sim.lag_s=2.0"]
VARIANTS = {
    "sync": ["--algo", "sync"],
    # The baseline at a smaller inner learning rate too (issue 11: one seed's sync run ended at 1.894 at 3e-3 and
    # 1.748 at 1.5e-3): the table compares against the better of the two, seed by seed.
    "sync_lr15": ["--algo", "sync", "--set", "inner.lr=1.5e-3"],
    "async": [],
    "async_faults": FAULTS,
    "async_faults_churn": FAULTS + ["--set", "sim.depart_fraction=0.25", "--set", "sim.late_fraction=0.25"],
}
LABELS = {
    "sync": "synchronous AdamW (fp32 DDP)",
    "sync_lr15": "synchronous AdamW (fp32 DDP), inner lr 1.5e-3",
    "async": "async, fault-free",
    "async_faults": "async, 30% of tasks dropped + slow tail + lag",
    "async_faults_churn": "... and 25% of workers leave for good, 25% join late",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(HERE / "standard.toml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra override for every run")
    ap.add_argument("--reuse", action="store_true", help="reuse JSON results already in --out")
    ap.add_argument("--out", default=str(HERE / "results" / "runs" / "foundation"))
    ap.add_argument("--table", default=str(HERE / "results" / "foundation.md"))
    args = ap.parse_args()
    t0 = time.time()
    extra = [x for s in args.sets for x in ("--set", s)]
    by = run_variants(args.config, {v: VARIANTS[v] for v in args.variants}, args.seeds, Path(args.out),
                      args.jobs, extra, args.reuse)
    # "vs sync": against the better synchronous baseline of each seed (lr 3e-3 or 1.5e-3), not an untuned one
    syncs = [by[v] for v in ("sync", "sync_lr15") if by.get(v)]
    sync = (sum(min(rs[i]["final_val_loss"] for rs in syncs) for i in range(len(syncs[0]))) / len(syncs[0])
            if syncs else None)
    ff = mean_of(by["async"], "final_val_loss") if by.get("async") else None
    lines = [
        "# Foundation: asynchronous gradient consensus vs synchronous data parallel, at equal tokens",
        "",
        f"Command: `python bench/bench_foundation.py {' '.join(sys.argv[1:])}`".replace(" `", "`") + "  ",
        f"Config: `bench/{Path(args.config).name}`, seeds {args.seeds}, overrides {args.sets or 'none'}.  ",
        machine_line(args.jobs) + f" Whole benchmark: {(time.time() - t0) / 60:.1f} min.",
        "",
        "Every run trains the same accepted-token budget and is scored on the same held-out windows. Upload bytes "
        "are the measured sizes of the encoded updates each worker sent (fp32, no compression); the DDP figure is "
        "one fp32 gradient per worker per step for the same tokens. Warm-up tokens and bytes count like the rest. "
        "\"vs best sync\": against the mean over seeds of the better synchronous run of each seed (inner lr 3e-3 "
        "or 1.5e-3). Every run goes through the shipped engine and Api (`trainnet simulate`).",
        "",
        "| run | val loss per seed | mean | vs best sync | vs fault-free | outer steps | dropped / expired leases "
        "| up per worker | DDP up per worker | reduction | virtual time s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in args.variants:
        rs = by[v]
        m = mean_of(rs, "final_val_loss")
        per_seed = ", ".join(f"{r['final_val_loss']:.4f}" for r in rs)
        lines.append(
            f"| {LABELS[v]} | {per_seed} | {m:.4f} | "
            f"{f'{100 * (m / sync - 1):+.1f}%' if sync else ''} | "
            f"{f'{100 * (m / ff - 1):+.2f}%' if ff and v.startswith('async') else ''} | "
            f"{mean_of(rs, 'outer_steps'):.0f} | {mean_of(rs, 'updates_dropped'):.0f} / "
            f"{mean_of(rs, lambda r: r.get('leases_expired', 0)):.0f} | "
            f"{mean_of(rs, 'bytes_up_per_worker') / 1e6:.2f} MB | {mean_of(rs, 'ddp_bytes_up_per_worker') / 1e6:.0f} MB | "
            f"{mean_of(rs, 'bytes_reduction_vs_ddp'):.0f}x | "
            f"{mean_of(rs, lambda r: r.get('sim_time_s', 0.0)):.0f} | {mean_of(rs, 'wall_s'):.0f} |"
        )
    lines += ["", f"Validation loss against accepted tokens (seed {args.seeds[0]}):", ""]
    lines += [f"- {LABELS[v]}: {curve_line(by[v][0])}" for v in args.variants]
    text = "\n".join(lines) + "\n"
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
