"""Time each robust aggregation rule on CPU, single thread, and write bench/results/aggregators_speed.md.

Use: ``PYTHONPATH=src python bench/bench_aggregators.py`` (about 5–10 minutes on a laptop core);
``--ns 8 --ds 1000000`` for a quick run; ``--out -`` prints the table without writing the file.

Each cell is the median of ``--repeats`` wall-clock runs on random float32 updates [n, d] with
uniform weights. A combination whose predicted time (10× the d/10 result, or a first run) exceeds
``--budget`` seconds is skipped and marked as such, so no number in the table is extrapolated.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime

import torch

from trainnet.consensus.robust import ROBUST_AGGREGATORS, CenteredClip, WeightedMean

RULES = {"mean (reference)": WeightedMean(), **ROBUST_AGGREGATORS, "cclip:buckets=2": CenteredClip(buckets=2)}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_rule(rule, x: torch.Tensor, w: torch.Tensor, repeats: int, budget: float) -> tuple[float, int]:
    """Median seconds over up to ``repeats`` runs (fewer if one run alone exceeds the budget)."""
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rule(x, w)
        times.append(time.perf_counter() - t0)
        if times[-1] > budget:
            break
    return statistics.median(times), len(times)


ROBUSTNESS_HEADER = """## Robustness sanity check (synthetic, one seed)

Error ||rule(updates) − honest mean|| divided by the honest spread (mean distance of an honest update
to the honest mean), with 16 honest + 4 malicious updates of d = 20,000: honest = shared direction
(std 0.05) + per-worker noise (std 0.1); attacks with default parameters, `own_update` = 4 honest rows.
Not a training result: it shows how far each attack moves each rule within one round.
`PYTHONPATH=src python bench/bench_aggregators.py --robustness-only` prints it alone.

"""


def robustness_table(n_h: int = 16, n_mal: int = 4, d: int = 20_000, seed: int = 0) -> str:
    """Markdown table: ||rule(honest + attack) − honest mean|| / mean ||honest_i − honest mean||, one seed.

    Synthetic updates (honest = shared direction + per-worker noise), so this measures how far each
    attack moves each rule relative to the honest spread, not the effect on training.
    """
    from trainnet.sim.attacks import ATTACKS, TRAINING_ATTACKS, AttackContext

    gen = torch.Generator().manual_seed(seed)
    honest = 0.05 * torch.randn(d, generator=gen) + 0.1 * torch.randn(n_h, d, generator=gen)
    target = honest.mean(0)
    spread = float((honest - target).norm(dim=1).mean())
    own = honest[:n_mal].clone()
    attacks = [a for a in ATTACKS if a not in TRAINING_ATTACKS and not a.startswith("test")]
    rules = {"mean": WeightedMean(), **ROBUST_AGGREGATORS}
    w = torch.full((n_h + n_mal,), 1.0 / (n_h + n_mal))
    lines = ["| attack | " + " | ".join(rules) + " |", "|" + "---|" * (1 + len(rules))]
    for a in attacks:
        ctx = AttackContext(rng=torch.Generator().manual_seed(seed + 1), n_total=n_h + n_mal, own_update=own)
        x = torch.cat([honest, ATTACKS[a](honest, n_mal, ctx)])
        errs = [float((r(x, w) - target).norm()) / spread for r in rules.values()]
        lines.append(f"| {a} | " + " | ".join(f"{e:.2f}" if e < 100 else f"{e:.0e}" for e in errs) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--ds", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=20.0, help="skip combos predicted to exceed this (s)")
    ap.add_argument("--out", default="bench/results/aggregators_speed.md")
    ap.add_argument("--robustness-only", action="store_true", help="print only the attack × rule error table")
    args = ap.parse_args(argv)
    if args.robustness_only:
        print(robustness_table())
        return 0
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    ds = sorted(args.ds)
    results: dict[tuple[str, int, int], str] = {}
    for n in args.ns:
        w = torch.full((n,), 1.0 / n)
        for d in ds:
            x = torch.randn(n, d, generator=gen)
            for name, rule in RULES.items():
                smaller = [dd for dd in ds if dd < d]
                if smaller:
                    last = results[(name, n, smaller[-1])]
                    if not last[0].isdigit():
                        results[(name, n, d)] = "skipped"
                        continue
                    predicted = float(last.split()[0]) * d / smaller[-1]
                    if predicted > args.budget:
                        results[(name, n, d)] = f"skipped (~{predicted:.0f} s predicted)"
                        continue
                t, runs = time_rule(rule, x, w, args.repeats, args.budget)
                results[(name, n, d)] = f"{t:.3f}" + ("" if runs == args.repeats else f" ({runs} run)")
                print(f"n={n:3d} d={d:>10,d} {name:24s} {results[(name, n, d)]} s", flush=True)
            del x
    lines = [
        "# Robust aggregation rules: CPU speed",
        "",
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} with "
        f"`PYTHONPATH=src python bench/bench_aggregators.py {' '.join(argv or sys.argv[1:])}`.",
        "",
        f"- CPU: {_cpu_name()} ({os.cpu_count()} logical cores on the machine; **1 torch thread** used; "
        "the 2-core machine was shared with other jobs while measuring, so timings can be noisy)",
        f"- Python {platform.python_version()}, torch {torch.__version__}, {platform.system()} {platform.machine()}",
        f"- Inputs: random float32 updates [n, d], uniform weights; each cell = median wall-clock seconds of "
        f"{args.repeats} runs (fewer where marked); combos predicted above {args.budget:.0f} s are skipped.",
        "- Rules use their registry defaults: trimmed_mean beta=0.2; cclip tau=auto, 3 iterations, start = "
        "coordinate-wise median; geomed ≤10 Weiszfeld iterations from the median; multikrum/krum/bulyan "
        "with the largest f the given n tolerates; norm_clip+trimmed_mean = clip to 2× median norm, then "
        "trimmed mean 0.2.",
        "",
    ]
    header = "| rule | " + " | ".join(f"n={n}, d={d:.0e}" for n in args.ns for d in ds) + " |"
    lines += [header, "|" + "---|" * (1 + len(args.ns) * len(ds))]
    for name in RULES:
        cells = [results.get((name, n, d), "-") for n in args.ns for d in ds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\n" + ROBUSTNESS_HEADER + robustness_table()
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w") as fh:
            fh.write(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
