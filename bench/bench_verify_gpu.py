"""Verifier tolerance on a real GPU: how far honest recomputation drifts on CUDA, and across CUDA and CPU.

    PYTHONPATH=src python bench/bench_verify_gpu.py --out bench/results/verify_gpu.md   # needs a CUDA device
    PYTHONPATH=src python bench/bench_verify_gpu.py --device cpu --out /tmp/v.md         # dry run without one

`run_task` on CUDA trains under bf16 autocast (when the GPU supports bf16) with the default, non-deterministic
kernels; on CPU it trains in fp32. This measures the relative L2 error and cosine of the pseudo-gradient Δ
for: the same task run twice on the GPU; the GPU result against a CPU recomputation (a CPU verifier
auditing a GPU worker); and cheats (90% / 50% of the steps, another sample seed) on the GPU, against the
default tolerance (relative L2 error <= 0.05, cosine >= 0.99). Every figure is measured here.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from trainnet.data.corpus import load_corpus
from trainnet.model.gpt import GPT, GPTConfig
from trainnet.train.local import TaskHParams, params_of, run_task, use_bf16
from trainnet.verify import Tolerance, compare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data", default=None, help="corpus file/folder (default: this Python's stdlib sources)")
    ap.add_argument("--out", default="bench/results/verify_gpu.md")
    ap.add_argument("--steps", default="20,100")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="task precision (auto: bf16 autocast on a GPU, fp32 on a CPU)")
    ap.add_argument("--warm-steps", type=int, default=200)
    args = ap.parse_args()
    dev = args.device
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=128)
    corpus = load_corpus(args.data, 65_536, 8, 2 * 1024 * 1024, min_shard_bytes=cfg.block_size + 2)
    ids = corpus.manifest.ids("train")
    model = GPT(cfg)
    init = params_of(model)
    warm = TaskHParams(steps=args.warm_steps, lr=1e-3, batch_size=16, seq_len=cfg.block_size)
    d = run_task(model, init, corpus.shard(ids[0]).tokens, warm, seed=0, device=dev).delta
    base = {k: (init[k] - d[k].cpu()).contiguous() for k in init}
    tok = corpus.shard(ids[1]).tokens
    tol = Tolerance()
    rows = []
    for h in [int(x) for x in args.steps.split(",")]:
        hp = TaskHParams(steps=h, lr=1e-3, batch_size=16, seq_len=cfg.block_size, precision=args.precision)

        def run(device: str, steps: int = h, seed: int = 7, hp: TaskHParams = hp) -> dict[str, torch.Tensor]:
            p = TaskHParams(**(hp.__dict__ | {"steps": steps}))
            out = run_task(model, base, tok, p, seed=seed, device=device).delta
            return {k: v.detach().cpu().float() for k, v in out.items()}

        ref = run(dev)
        cases = [("honest: same task again on " + dev, run(dev)),
                 (f"honest: recomputed on cpu ({'bf16' if args.precision == 'bf16' else 'fp32'})", run("cpu")),
                 ("cheat: 90% of the steps", run(dev, steps=max(1, round(0.9 * h)))),
                 ("cheat: 50% of the steps", run(dev, steps=max(1, round(0.5 * h)))),
                 ("cheat: another sample seed", run(dev, seed=8))]
        for name, delta in cases:
            m = compare(delta, ref)
            ok = m["rel_error"] <= tol.rel_error and m["cosine"] >= tol.min_cosine
            rows.append({"h": h, "case": name, "rel_error": m["rel_error"], "cosine": m["cosine"], "passes": ok})
            print(f"H={h:4d} {name:40s} rel {m['rel_error']:.3e} cos {m['cosine']:.6f} {'pass' if ok else 'FAIL'}",
                  flush=True)
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else platform.processor() or platform.machine()
    bf16 = use_bf16(args.precision, dev)
    lines = ["# Verifier tolerance on a GPU (`bench/bench_verify_gpu.py`)\n",
             f"Device {name} ({dev}, {'bf16 autocast' if bf16 else 'fp32'}, default non-deterministic kernels), "
             f"torch {torch.__version__}; task precision `{args.precision}`. Model: 4-layer GPT d=256, ctx 128, "
             f"batch 16, base after {args.warm_steps} AdamW steps. Error of the pseudo-gradient against the first run on {dev}. "
             f"Default tolerance: relative L2 error <= {tol.rel_error}, cosine >= {tol.min_cosine}.\n",
             "| H | case | relative L2 error | cosine | passes |", "|---|---|---|---|---|"]
    lines += [f"| {r['h']} | {r['case']} | {r['rel_error']:.2e} | {r['cosine']:.6f} | {'yes' if r['passes'] else 'no'} |"
              for r in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
