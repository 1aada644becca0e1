"""Attack matrix: attacks x malicious fraction x defence x seeds, IID and non-IID; writes bench/results/security.md.

    PYTHONPATH=src python bench/bench_security.py                 # full matrix, 2 processes, 1 thread each
    PYTHONPATH=src python bench/bench_security.py --seeds 1 --attacks alie,backdoor --fractions 0.3 --out /tmp/s.md
    PYTHONPATH=src python bench/bench_security.py --shards iid --procs 16 --jsonl a.jsonl   # half the matrix
    PYTHONPATH=src python bench/bench_security.py --merge a.jsonl,b.jsonl                   # table from saved runs

Every run is `trainnet.sim.simulate` on bench/security.toml, fine-tuning a small model that is first
pre-trained here (one sequential run of --pretrain-steps, same for every cell) so that the attacks act
on a model that has learned something, while the loss still falls during the run. Each finished run is
appended to --jsonl at once, so an interrupted matrix keeps what it measured. Defences: plain mean; the robust rule (--robust); the robust rule plus
verification by recomputation at --verify-rate. Val loss is reported relative to the clean run
(no attack, plain mean) of the same seed and data layout.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

CONFIG = "bench/security.toml"
# ipm:eps=2 is IPM's mean-breaking setting (eps > (n - f) / f); backdoor with boost=3 is the model-replacement
# backdoor (poisoned training, update scaled up so it survives averaging).
ATTACKS = ["sign_flip:s=4", "alie", "ipm:eps=2", "minmax", "scaled", "replay", "fewer_steps", "random_shard",
           "backdoor:rate=0.5,boost=3"]
_CORPUS = None


def pretrain(path: str, steps: int, data_sets: list[str]) -> float:
    """Train the shared starting point sequentially (one worker, plain AdamW) and save it as safetensors."""
    from safetensors.torch import save_file

    from trainnet.config import load_config
    from trainnet.data.corpus import load_run_corpus
    from trainnet.models import build_model
    from trainnet.train.local import TaskHParams, evaluate, params_of, run_task

    cfg = load_config(CONFIG, data_sets)
    corpus = load_run_corpus(cfg)
    torch.manual_seed(12345)
    model = build_model(cfg.model)
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
    from trainnet.data.corpus import load_run_corpus
    from trainnet.sim.simulator import simulate

    cfg = load_config(CONFIG, job["sets"])
    if _CORPUS is None:
        _CORPUS = load_run_corpus(cfg)
    r = simulate(cfg, corpus=_CORPUS)
    keep = ["final_val_loss", "outer_steps", "wall_s", "honest_banned", "cheaters_banned", "rounds_to_ban",
            "verify_cost", "backdoor_asr", "backdoor_base_rate", "malicious_nodes", "audits_passed", "audits_failed",
            "malicious_updates_accepted"]
    return job | {k: r.get(k) for k in keep} | {"machine": f"{_machine()}, torch {torch.__version__}"}


def jobs(args: argparse.Namespace, init: str) -> list[dict]:
    defences = {"mean": ("mean", 0.0), "robust": (args.robust, 0.0), "robust+verify": (args.robust, args.verify_rate)}
    defences |= {rule: (rule, 0.0) for rule in args.extra_rules}
    defences = {k: v for k, v in defences.items() if k in args.defences}
    out = []
    for iid in {"both": (True, False), "iid": (True,), "noniid": (False,)}[args.shards]:
        for seed in (args.seed_list or range(args.seeds)):
            cells = [("", 0.0)] + [(a, f) for a in args.attacks for f in args.fractions]
            for attack, frac in cells:
                for dname, (agg, rate) in defences.items():
                    sets = args.data_sets + [f"sim.init={json.dumps(init)}", f"sim.seed={seed}", f"sim.iid={str(iid).lower()}",
                            f"sim.attack={json.dumps(attack)}", f"sim.malicious={frac}",
                            f"consensus.aggregator={json.dumps(agg)}", f"consensus.verify_rate={rate}",
                            f"consensus.verify_probation={args.probation}",
                            # a fresh audit secret per cell, as a real run draws one: the audit draws of
                            # different cells are independent (else every attack repeats one seed's luck)
                            f"consensus.audit_key={json.dumps(f'{attack}|{frac}|{iid}')}"]
                    out.append({"iid": iid, "seed": seed, "attack": attack, "frac": frac, "defence": dname,
                                "sets": sets})
    done = {_key(json.loads(line)) for f in (args.skip.split(",") if args.skip else [])
            for line in Path(f).read_text().splitlines() if line.strip() and '"meta"' not in line}
    return [j for j in out if _key(j) not in done]


def _key(r: dict) -> tuple:
    return r["iid"], r["seed"], r["attack"], r["frac"], r["defence"]


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def table(results: list[dict], args: argparse.Namespace, meta: dict) -> str:
    # Each run is compared with the clean run of the same seed, layout and machine (torch builds differ
    # in the last bits, so the pre-trained start differs slightly between machines).
    clean = {(r["iid"], r["seed"], r.get("machine")): r["final_val_loss"] for r in results
             if r["attack"] == "" and r["defence"] == "mean"}
    results = [r for r in results if (r["iid"], r["seed"], r.get("machine")) in clean]  # no baseline: left out
    for r in results:
        r["rel"] = r["final_val_loss"] / clean[(r["iid"], r["seed"], r.get("machine"))] - 1
    extra = sorted({r["defence"] for r in results} - {"mean", "robust", "robust+verify"})
    defs = [d for d in ["mean", "robust", *extra, "robust+verify"]  # extra: other rules alone (--extra-rules)
            if any(r["defence"] == d for r in results)]  # (a reduced run may leave a defence out)
    lines = ["# Attack matrix (`bench/bench_security.py`)\n", meta["header"], ""]
    for iid in [x for x in (True, False) if any(r["iid"] == x for r in results)]:
        lines += [f"\n## {'IID' if iid else 'Non-IID'} shards\n",
                  "Val loss relative to the clean run (no attack, plain mean), mean over seeds "
                  "[worst seed]; ASR = backdoor attack success rate; bans = cheaters banned / cheaters "
                  "(median outer step of the ban); honest = honest nodes banned; cost = verification compute.\n",
                  "| attack | malicious | " + " | ".join(f"`{d}`" if d in extra else d for d in defs)
                  + " | bans (verify) | honest banned | verify cost |",
                  "|---" * (len(defs) + 5) + "|"]
        for attack in [""] + args.attacks:
            for frac in ([0.0] if attack == "" else args.fractions):
                row = []
                cell = {d: [r for r in results if r["iid"] == iid and r["attack"] == attack and r["frac"] == frac
                            and r["defence"] == d] for d in defs}
                if not all(cell.values()):
                    continue
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
                     for a in args.attacks),
           f"- Without verification no cheater is ever banned; at {100 * max(args.fractions):.0f}% the plain mean "
           f"accepted and credited {sum(r.get('malicious_updates_accepted') or 0 for r in mean_fail)} malicious "
           f"updates over {len(mean_fail)} runs (mean {_mean([r.get('malicious_updates_accepted') or 0 for r in mean_fail]):.0f} per run)"]
    return "\n".join(out)


@functools.cache  # read once per process, not once per run
def _machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--attacks", type=lambda s: [a for a in s.split(";") if a], default=ATTACKS,
                    help="';'-separated attack specs ('': only the clean runs)")
    ap.add_argument("--defences", type=lambda s: s.split(","), default=["mean", "robust", "robust+verify"])
    ap.add_argument("--probation", type=int, default=1, help="consensus.verify_probation")
    ap.add_argument("--extra-rules", type=lambda s: [x for x in s.split(";") if x], default=[],
                    help="';'-separated rules run alone as extra defences (name them in --defences too)")
    ap.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.1, 0.2, 0.3])
    ap.add_argument("--seed-list", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="run these seeds only (default: 0 .. --seeds - 1)")
    ap.add_argument("--skip", default=None, help="','-separated JSONL files: skip the runs they already hold")
    ap.add_argument("--shards", choices=["both", "iid", "noniid"], default="both")
    ap.add_argument("--robust", default="robust")
    ap.add_argument("--verify-rate", type=float, default=0.12)
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--data", default=None, help="corpus file/folder (default: this Python's stdlib sources)")
    ap.add_argument("--jsonl", default=None, help="append each finished run here (default: <out>.jsonl)")
    ap.add_argument("--merge", default=None, help="','-separated JSONL files: write the table from them, run nothing")
    ap.add_argument("--header", default="", help="with --merge: the table's header line (how the runs were made)")
    ap.add_argument("--out", default="bench/results/security.md")
    args = ap.parse_args()
    args.data_sets = [f"data.path={json.dumps(args.data)}"] if args.data else []
    out = Path(args.out)
    if args.merge:
        results = [json.loads(line) for f in args.merge.split(",") for line in Path(f).read_text().splitlines()
                   if line.strip()]
        metas = [r for r in results if r.get("meta")]
        # a later file wins for the same cell on the same machine
        results = list({(*_key(r), r.get("machine")): r for r in results if not r.get("meta")}.values())
        header = args.header or (" ".join(dict.fromkeys(m["header"] for m in metas)) if metas else "")
        _write(out, results, args, {"header": header})
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    init = str(Path(tempfile.gettempdir()) / f"trainnet_security_init_{args.pretrain_steps}.safetensors")
    init_loss = pretrain(init, args.pretrain_steps, args.data_sets)
    print(f"pre-trained {args.pretrain_steps} steps: val loss {init_loss:.3f}", flush=True)
    todo = jobs(args, init)
    jsonl = Path(args.jsonl or out.with_suffix(".jsonl"))
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    results = []
    # spawn, not fork: the parent ran autograd (the pre-train), and a CUDA build of torch refuses autograd after fork
    with mp.get_context("spawn").Pool(args.procs, initializer=_init_worker) as pool, jsonl.open("a") as log:
        for i, r in enumerate(pool.imap_unordered(run_one, todo)):
            results.append(r)
            log.write(json.dumps({k: v for k, v in r.items() if k != "sets"}) + "\n")
            log.flush()
            if i % 20 == 0:
                print(f"{i + 1}/{len(todo)} runs, {time.perf_counter() - t0:.0f}s", flush=True)
        wall = time.perf_counter() - t0
        meta = {"header": (
            f"Config `{CONFIG}` (2-layer GPT d=64, ctx 64, batch 4, H=5, 10 workers, quorum 8, 640k tokens), "
            f"fine-tuned from a {args.pretrain_steps}-step sequential pre-train (val loss {init_loss:.3f}); robust "
            f"rule `{args.robust}`; verification rate {args.verify_rate} + probation {args.probation}, ban after 1 "
            f"failed audit; {args.seeds} "
            f"seeds; {args.shards} shards: {len(todo)} runs in {wall / 60:.1f} min on {_machine()} "
            f"({args.procs} processes x 1 torch thread), torch {torch.__version__}.")}
        log.write(json.dumps({"meta": True} | meta) + "\n")
    _write(out, results, args, meta)


def _write(out: Path, results: list[dict], args: argparse.Namespace, meta: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "sets"} for r in results], indent=0))
    out.write_text(table(results, args, meta))
    print(out.read_text())


if __name__ == "__main__":
    main()
