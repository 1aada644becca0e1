"""Second reference for the attack matrix: the clean run of only the honest workers.

    PYTHONPATH=src python bench/bench_security.py && PYTHONPATH=src python bench/bench_security_reference.py
    PYTHONPATH=src python bench/bench_security_reference.py --data corpus.txt --pretrain-steps 400   # same options

Once verification has banned the cheaters, a defended run continues with the honest workers only,
and fewer workers per buffer changes the run (less staleness, more outer steps for the same tokens).
This runs the clean run with 10 − round(f × 10) workers (robust rule, no attack) per fraction f,
seed and data layout, and appends to bench/results/security.md the defended runs' val loss relative
to it, next to the relative loss against the full clean run.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_security as bs  # noqa: E402


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--data", default=None)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    data_sets = [f"data.path={json.dumps(args.data)}"] if args.data else []
    torch.set_num_threads(1)  # the pre-train must match bench_security.py's bit for bit (it runs on 1 thread)
    out = Path("bench/results/security.md")
    results = json.loads(out.with_suffix(".json").read_text())
    init = str(Path(tempfile.gettempdir()) / f"trainnet_security_init_{args.pretrain_steps}.safetensors")
    init_loss = bs.pretrain(init, args.pretrain_steps, data_sets)
    fracs = sorted({r["frac"] for r in results if r["frac"] > 0})
    seeds = sorted({r["seed"] for r in results})
    todo = []
    for iid in (True, False):
        for seed in seeds:
            for f in fracs:
                sets = data_sets + [f"sim.init={json.dumps(init)}", f"sim.seed={seed}", f"sim.iid={str(iid).lower()}",
                        f"sim.workers={10 - round(10 * f)}", 'consensus.aggregator="robust"']
                todo.append({"iid": iid, "seed": seed, "frac": f, "sets": sets})
    with mp.get_context("spawn").Pool(args.procs, initializer=bs._init_worker) as pool:
        refs = pool.map(bs.run_one, todo)
    ref = {(r["iid"], r["seed"], r["frac"]): r["final_val_loss"] for r in refs}
    # the full clean run of the same seed, layout and machine as the defended run (see bench_security.table)
    clean = {(r["iid"], r["seed"], r.get("machine")): r["final_val_loss"] for r in results
             if r["attack"] == "" and r["defence"] == "mean"}
    lines = ["\n## Defended runs against the clean run of their honest workers only\n",
             "Robust rule + verification. `vs full clean` = against the clean 10-worker plain-mean run (as above); "
             f"the honest-only references ran on {bs._machine()}, torch {torch.__version__}, from a pre-train "
             f"with val loss {init_loss:.3f}; "
             "`vs honest-only clean` = against the clean run (robust rule, no attack) with only the "
             f"10 − round(10 f) honest workers, same seed and layout. Mean over {len(seeds)} seeds [worst].\n",
             "| data | malicious | vs full clean | vs honest-only clean |", "|---|---|---|---|"]
    for iid in (True, False):
        for f in fracs:
            rs = [r for r in results if r["defence"] == "robust+verify" and r["attack"] and r["frac"] == f
                  and r["iid"] == iid]
            a = [r["final_val_loss"] / clean[(r["iid"], r["seed"], r.get("machine"))] - 1 for r in rs]
            b = [r["final_val_loss"] / ref[(r["iid"], r["seed"], f)] - 1 for r in rs]
            lines.append(f"| {'IID' if iid else 'non-IID'} | {100 * f:.0f}% | {100 * statistics.fmean(a):+.1f}% "
                         f"[{100 * max(a):+.1f}%] | {100 * statistics.fmean(b):+.1f}% [{100 * max(b):+.1f}%] |")
    with out.open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
