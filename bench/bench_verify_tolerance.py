"""Calibrate the verifier's tolerance: how far honest recomputation drifts vs how far cheats land.

    PYTHONPATH=src python bench/bench_verify_tolerance.py      # writes bench/results/verify_tolerance.md

Honest drift sources measured on CPU as stand-ins for GPU nondeterminism: (a) another thread count
(different float summation order inside matmuls), (b) the base parameters rounded through bfloat16
before training (a worst case for bf16 autocast kernels differing), (c) 1e-6 relative noise on the base.
Cheats: fewer steps (90%, 50%), another shard, another seed. Relative L2 error and cosine of the
pseudo-gradient against the exact recomputation, for H = 5 and H = 100.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from trainnet.config import load_config
from trainnet.data.corpus import load_corpus
from trainnet.models import build_model
from trainnet.train.local import TaskHParams, params_of, run_task
from trainnet.verify import compare


def main() -> None:
    cfg = load_config("bench/security.toml")
    corpus = load_corpus(None, cfg.data.shard_bytes, cfg.data.val_every, cfg.data.max_bytes)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    ids = corpus.manifest.ids("train")
    # A partly trained base, so the updates look like mid-run updates.
    torch.set_num_threads(1)
    warm = TaskHParams(steps=300, lr=3e-3, batch_size=cfg.inner.batch_size, seq_len=cfg.model.block_size)
    init = params_of(model)
    d = run_task(model, init, corpus.shard(ids[0]).tokens, warm, seed=0).delta
    base = {k: init[k] - d[k] for k in init}
    rows = []
    for h in (5, 100):
        hp = TaskHParams(steps=h, lr=3e-3, batch_size=cfg.inner.batch_size, seq_len=cfg.model.block_size)
        tok = corpus.shard(ids[3]).tokens

        def run(b=base, tokens=tok, p=hp, seed=7, threads=1):
            torch.set_num_threads(threads)
            out = run_task(model, b, tokens, p, seed=seed).delta
            torch.set_num_threads(1)
            return out

        ref = run()
        gen = torch.Generator().manual_seed(1)
        cases = {
            "honest, same inputs (CPU)": run(),
            "honest, 2 threads instead of 1": run(threads=2),
            "honest, base rounded to bf16": run(b={k: v.bfloat16().float() for k, v in base.items()}),
            "honest, base x (1 + 1e-6 noise)": run(b={k: v * (1 + 1e-6 * torch.randn(v.shape, generator=gen))
                                                       for k, v in base.items()}),
            "cheat: 90% of the steps": run(p=TaskHParams(**(hp.to_dict() | {"steps": max(1, round(0.9 * h))}))),
            "cheat: 50% of the steps": run(p=TaskHParams(**(hp.to_dict() | {"steps": max(1, h // 2)}))),
            "cheat: another shard": run(tokens=corpus.shard(ids[9]).tokens),
            "cheat: another sample seed": run(seed=8),
        }
        for name, delta in cases.items():
            m = compare(delta, ref)
            rows.append(f"| {h} | {name} | {m['rel_error']:.2e} | {m['cosine']:.6f} |")
    text = ("# Verifier tolerance calibration (`bench/bench_verify_tolerance.py`)\n\n"
            f"Model and data of `bench/security.toml`, base after 300 AdamW steps, {platform.machine()} CPU, "
            f"torch {torch.__version__}. Error of the pseudo-gradient against the exact recomputation. "
            "Default tolerance: relative L2 error <= 0.05 and cosine >= 0.99.\n\n"
            "| H | case | relative L2 error | cosine |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    Path("bench/results/verify_tolerance.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
