"""Attack matrix: attacks x malicious fraction x defence x seeds, IID and non-IID; writes bench/results/security.md.

    PYTHONPATH=src python bench/bench_security.py                 # full matrix, 2 processes, 1 thread each
    PYTHONPATH=src python bench/bench_security.py --seeds 1 --attacks alie,backdoor --fractions 0.3 --out /tmp/s.md

Every run is `trainnet.sim.simulate` on bench/security.toml, fine-tuning a small model that is first
pre-trained here (one sequential run, same for every cell) so that the attacks act on a model that
has learned something. Defences: plain mean; the robust rule (--robust); the robust rule plus
verification by recomputation at --verify-rate. Val loss is reported relative to the clean run
(no attack, plain mean) of the same seed and data layout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

CONFIG = "bench/security.toml"
ATTACKS = ["sign_flip:s=4", "alie", "ipm", "minmax", "scaled", "replay", "fewer_steps", "random_shard",
           "backdoor:rate=0.2"]
_CORPUS = None


def pretrain(path: str, steps: int) -> float:
    """Train the shared starting point sequentially (one worker, plain AdamW) and save it as safetensors."""
    from safetensors.torch import save_file

    from trainnet.config import load_config
    from trainnet.data.corpus import load_corpus
    from trainnet.model.gpt import GPT
    from trainnet.train.local import TaskHParams, evaluate, params_of, run_task

    cfg = load_config(CONFIG)
    corpus = load_corpus(None, cfg.data.shard_bytes, cfg.data.val_every, cfg.data.max_bytes)
    torch.manual_seed(12345)
    model = GPT(cfg.model)
    train = torch.cat([corpus.shard(i).tokens for i in corpus.manifest.ids("train")])
    hp = TaskHParams(steps=steps, lr=3e-3, batch_size=cfg.inner.batch_size, seq_len=cfg.model.block_size,
                     progress_start=0.0, progress_end=1.0, lr_warmup=0.05, min_lr_ratio=0.3)
    base = params_of(model)
    delta = run_task(model, base, train, hp, seed=1).delta
    params = {k: base[k] - delta[k] for k in base}
    save_file({k: v.contiguous() for k, v in params.items()}, path)
    val = [corpus.shard(i).tokens for i in corpus.manifest.ids("val")]
    return evaluate(model, params, val, cfg.sim.eval_batches, cfg.sim.eval_batch_size, cfg.model.block_size)


def _init_worker() -> None:
    torch.set_num_threads(1)


def run_one(job: dict) -> dict:
    global _CORPUS
    from trainnet.config import load_config
    from trainnet.data.corpus import load_corpus
    from trainnet.sim.simulator import simulate

    cfg = load_config(CONFIG, job["sets"])
    if _CORPUS is None:
        _CORPUS = load_corpus(None, cfg.data.shard_bytes, cfg.data.val_every, cfg.data.max_bytes,
                              min_shard_bytes=cfg.model.block_size + 2)
    r = simulate(cfg, corpus=_CORPUS)
    keep = ["final_val_loss", "outer_steps", "wall_s", "honest_banned", "cheaters_banned", "rounds_to_ban",
            "verify_cost", "backdoor_asr", "backdoor_base_rate", "malicious_nodes", "audits_passed", "audits_failed"]
    return job | {k: r.get(k) for k in keep}


def jobs(args: argparse.Namespace, init: str) -> list[dict]:
    defences = {"mean": ("mean", 0.0), "robust": (args.robust, 0.0), "robust+verify": (args.robust, args.verify_rate)}
    out = []
    for iid in (True, False):
        for seed in range(args.seeds):
            cells = [("", 0.0)] + [(a, f) for a in args.attacks for f in args.fractions]
            for attack, frac in cells:
                for dname, (agg, rate) in defences.items():
                    sets = [f"sim.init={json.dumps(init)}", f"sim.seed={seed}", f"sim.iid={str(iid).lower()}",
                            f"sim.attack={json.dumps(attack)}", f"sim.malicious={frac}",
                            f"consensus.aggregator={json.dumps(agg)}", f"consensus.verify_rate={rate}"]
                    out.append({"iid": iid, "seed": seed, "attack": attack, "frac": frac, "defence": dname,
                                "sets": sets})
    return out


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def table(results: list[dict], args: argparse.Namespace, meta: dict) -> str:
    clean = {(r["iid"], r["seed"]): r["final_val_loss"] for r in results
             if r["attack"] == "" and r["defence"] == "mean"}
    for r in results:
        r["rel"] = r["final_val_loss"] / clean[(r["iid"], r["seed"])] - 1
    defs = ["mean", "robust", "robust+verify"]
    lines = ["# Attack matrix (`bench/bench_security.py`)\n", meta["header"], ""]
    for iid in (True, False):
        lines += [f"\n## {'IID' if iid else 'Non-IID'} shards\n",
                  "Val loss relative to the clean run (no attack, plain mean), mean over seeds "
                  "[worst seed]; ASR = backdoor attack success rate; bans = cheaters banned / cheaters "
                  "(median outer step of the ban); honest = honest nodes banned; cost = verification compute.\n",
                  "| attack | malicious | mean | robust | robust+verify | bans (verify) | honest banned | verify cost |",
                  "|---|---|---|---|---|---|---|---|"]
        for attack in [""] + args.attacks:
            for frac in ([0.0] if attack == "" else args.fractions):
                row = []
                cell = {d: [r for r in results if r["iid"] == iid and r["attack"] == attack and r["frac"] == frac
                            and r["defence"] == d] for d in defs}
                for d in defs:
                    rs = cell[d]
                    txt = f"{100 * _mean([r['rel'] for r in rs]):+.1f}% [{100 * max(r['rel'] for r in rs):+.1f}%]"
                    if attack.startswith("backdoor"):
                        txt += f", ASR {100 * _mean([r['backdoor_asr'] for r in rs]):.0f}%"
                    row.append(txt)
                v = cell["robust+verify"]
                mal = sum(len(r["malicious_nodes"] or []) for r in v)
                rounds = [x for r in v for x in (r["rounds_to_ban"] or [])]
                bans = f"{sum(r['cheaters_banned'] or 0 for r in v)}/{mal}" + (
                    f" (step {statistics.median(rounds):.0f})" if rounds else "") if mal else "—"
                honest = sum(r["honest_banned"] or 0 for r in v)
                cost = _mean([r["verify_cost"] or 0.0 for r in v])
                lines.append(f"| {attack or 'none (clean)'} | {100 * frac:.0f}% | {' | '.join(row)} | {bans} | "
                             f"{honest} | {100 * cost:.1f}% |")
    lines += ["", summary(results, args)]
    return "\n".join(lines) + "\n"


def summary(results: list[dict], args: argparse.Namespace) -> str:
    v = [r for r in results if r["defence"] == "robust+verify" and r["attack"]]
    at30 = [r for r in v if r["frac"] == max(args.fractions)]
    mal = sum(len(r["malicious_nodes"] or []) for r in v)
    within = sum(sum(1 for x in (r["rounds_to_ban"] or []) if x <= 30) for r in v)
    bd = [r["backdoor_asr"] for r in at30 if r["attack"].startswith("backdoor")]
    mean_fail = [r for r in results if r["defence"] == "mean" and r["frac"] == max(args.fractions) and r["attack"]]
    worst = max(at30, key=lambda r: r["rel"]) if at30 else None
    out = ["## Targets (default defence = robust rule + verification)\n",
           f"- Val loss at {100 * max(args.fractions):.0f}% malicious, worst cell mean over seeds: " +
           (", ".join(f"{a}: {100 * _mean([r['rel'] for r in at30 if r['attack'] == a]):+.1f}%"
                      for a in args.attacks)) + (f" (worst single run {worst['attack']} seed {worst['seed']} "
                                                 f"{'IID' if worst['iid'] else 'non-IID'}: {100 * worst['rel']:+.1f}%)"
                                                 if worst else ""),
           f"- Backdoor ASR at {100 * max(args.fractions):.0f}%: mean {100 * _mean(bd):.1f}%, max "
           f"{100 * max(bd, default=float('nan')):.1f}%",
           f"- Cheaters banned within 30 outer steps: {within}/{mal} = {100 * within / max(mal, 1):.1f}%",
           f"- Honest nodes banned (all runs, all defences): {sum(r['honest_banned'] or 0 for r in results)}",
           f"- Verification cost: mean {100 * _mean([r['verify_cost'] for r in v]):.1f}%, max "
           f"{100 * max((r['verify_cost'] for r in v), default=0):.1f}% of training compute (inner steps)",
           f"- Plain mean at {100 * max(args.fractions):.0f}%, mean relative loss per attack: " +
           ", ".join(f"{a}: {100 * _mean([r['rel'] for r in mean_fail if r['attack'] == a]):+.1f}%"
                     for a in args.attacks)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--attacks", type=lambda s: s.split(","), default=ATTACKS)
    ap.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.1, 0.2, 0.3])
    ap.add_argument("--robust", default="robust")
    ap.add_argument("--verify-rate", type=float, default=0.14)
    ap.add_argument("--pretrain-steps", type=int, default=800)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--out", default="bench/results/security.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    init = str(Path(tempfile.gettempdir()) / f"trainnet_security_init_{args.pretrain_steps}.safetensors")
    init_loss = pretrain(init, args.pretrain_steps)
    print(f"pre-trained {args.pretrain_steps} steps: val loss {init_loss:.3f}", flush=True)
    todo = jobs(args, init)
    results = []
    with mp.get_context("fork").Pool(args.procs, initializer=_init_worker) as pool:
        for i, r in enumerate(pool.imap_unordered(run_one, todo)):
            results.append(r)
            if i % 20 == 0:
                print(f"{i + 1}/{len(todo)} runs, {time.perf_counter() - t0:.0f}s", flush=True)
    wall = time.perf_counter() - t0
    meta = {"header": (
        f"Config `{CONFIG}` (1-layer GPT d=32, ctx 32, batch 4, H=5, 10 workers, quorum 8, 320k tokens), "
        f"fine-tuned from a {args.pretrain_steps}-step sequential pre-train (val loss {init_loss:.3f}); robust rule "
        f"`{args.robust}`; verification rate {args.verify_rate}, ban after 1 failed audit; {args.seeds} seeds; "
        f"{len(todo)} runs in {wall / 60:.1f} min on {platform.machine()} ({args.procs} processes x 1 torch "
        f"thread, 2 shared CPU cores), torch {torch.__version__}.")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "sets"} for r in results], indent=0))
    Path(args.out).write_text(table(results, args, meta))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
