"""Which robust rule? Each rule alone (no verification) against the attacks that hurt plain averaging.

    PYTHONPATH=src python bench/bench_robust_rules.py                     # writes bench/results/robust_rules.md
    PYTHONPATH=src python bench/bench_robust_rules.py --seeds 2 --data corpus.txt --procs 16

Same config, pre-train and attacks as bench/bench_security.py, 30% malicious, IID shards. Each cell is the
final val loss relative to the clean plain-mean run of the same seed (mean over seeds), and for the backdoor
its attack success rate. The clean column shows what a rule costs when nobody attacks.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_security as bs  # noqa: E402

RULES = ["mean", "robust", "trimmed_mean:0.3", "median", "norm_clip:2+median", "cclip:tau=1.0,iters=3,buckets=2",
         "geomed", "multikrum", "bulyan"]
ATTACKS = ["", "sign_flip:s=4", "ipm:eps=2", "scaled", "alie", "backdoor:rate=0.5,boost=3"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--rules", type=lambda s: s.split(";"), default=RULES)
    ap.add_argument("--frac", type=float, default=0.3)
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--data", default=None)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--out", default="bench/results/robust_rules.md")
    args = ap.parse_args()
    data_sets = [f"data.path={json.dumps(args.data)}"] if args.data else []
    torch.set_num_threads(1)  # the pre-train must match bench_security.py's bit for bit (it runs on 1 thread)
    t0 = time.perf_counter()
    init = str(Path(tempfile.gettempdir()) / f"trainnet_security_init_{args.pretrain_steps}.safetensors")
    init_loss = bs.pretrain(init, args.pretrain_steps, data_sets)
    todo = []
    for seed in range(args.seeds):
        for rule in args.rules:
            for attack in ATTACKS:
                sets = data_sets + [f"sim.init={json.dumps(init)}", f"sim.seed={seed}", "sim.iid=true",
                                    f"sim.attack={json.dumps(attack)}", f"sim.malicious={args.frac if attack else 0}",
                                    f"consensus.aggregator={json.dumps(rule)}"]
                todo.append({"seed": seed, "rule": rule, "attack": attack, "sets": sets})
    with mp.get_context("spawn").Pool(args.procs, initializer=bs._init_worker) as pool:
        results = pool.map(bs.run_one, todo)
    clean = {r["seed"]: r["final_val_loss"] for r in results if r["rule"] == "mean" and r["attack"] == ""}
    lines = ["# Robust rules alone against the attacks (`bench/bench_robust_rules.py`)\n",
             f"Config `bench/security.toml` from a {args.pretrain_steps}-step pre-train (val loss {init_loss:.3f}), "
             f"{100 * args.frac:.0f}% malicious, IID, no verification; {args.seeds} seed(s); {len(todo)} runs in "
             f"{(time.perf_counter() - t0) / 60:.1f} min on {bs._machine()}, torch {torch.__version__}. Val loss "
             "relative to the clean plain-mean run (mean over seeds); backdoor: + attack success rate.\n",
             "| rule | " + " | ".join(a or "clean" for a in ATTACKS) + " |", "|---" * (len(ATTACKS) + 1) + "|"]
    for rule in args.rules:
        cells = []
        for attack in ATTACKS:
            rs = [r for r in results if r["rule"] == rule and r["attack"] == attack]
            rel = statistics.fmean(r["final_val_loss"] / clean[r["seed"]] - 1 for r in rs)
            txt = f"{100 * rel:+.1f}%"
            if attack.startswith("backdoor"):
                txt += f", ASR {100 * statistics.fmean(r['backdoor_asr'] for r in rs):.0f}%"
            cells.append(txt)
        lines.append(f"| `{rule}` | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps([{k: v for k, v in r.items() if k != "sets"} for r in results],
                                                   indent=0))
    print(out.read_text())


if __name__ == "__main__":
    main()
