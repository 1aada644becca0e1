"""The synchronous data-parallel baseline: one AdamW step per global batch, no faults.

    result = run_sync(load_config("bench/standard.toml", ["sim.algo=sync"]))

Equivalent to W workers all-reducing fp32 gradients every step: the global batch is W x batch_size
windows, drawn from the same shards in the same order the asynchronous run hands them out (shard of
task k for H steps), with the same learning-rate schedule as a function of tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from trainnet.config import RunConfig
from trainnet.data.corpus import Corpus, load_run_corpus
from trainnet.models import build_model
from trainnet.train.local import evaluate, make_inner_optimizer, params_of, sample_batch
from trainnet.train.schedule import lr_at


def run_sync(cfg: RunConfig, on_progress: Callable[[dict[str, Any]], None] | None = None,
             corpus: Corpus | None = None) -> dict[str, Any]:
    t_start = time.perf_counter()
    s, inner = cfg.sim, cfg.inner
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    corpus = corpus or load_run_corpus(cfg)
    model = build_model(cfg.model)
    n_params = sum(p.numel() for p in model.parameters())
    val_tokens = [corpus.shard(i).tokens for i in corpus.manifest.ids("val")]
    train_ids = corpus.manifest.ids("train")
    opt = make_inner_optimizer(model, inner.lr, inner.weight_decay, inner.beta1, inner.beta2)
    W, B, T, H = s.workers, inner.batch_size, cfg.model.block_size, cfg.consensus.h
    tokens_per_step = W * B * T
    steps = max(1, round(s.tokens / tokens_per_step))
    gens = [torch.Generator().manual_seed(s.seed * 1000 + j) for j in range(W)]
    curve: list[dict[str, float]] = []
    eval_every_steps = max(1, steps // 40)

    def record_eval(step: int) -> None:
        loss = evaluate(model, params_of(model), val_tokens, s.eval_batches, s.eval_batch_size, T)
        curve.append({"tokens": step * tokens_per_step, "outer_steps": step, "val_loss": loss,
                      "wall_s": time.perf_counter() - t_start})
        if on_progress:
            on_progress(curve[-1] | {"tokens_target": s.tokens})

    record_eval(0)
    model.train()
    for step in range(steps):
        lr = lr_at(step / steps, inner.lr, inner.warmup_tokens, inner.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        task_row = (step // H) * W
        xs, ys = [], []
        for j in range(W):
            shard = corpus.shard(train_ids[(task_row + j) % len(train_ids)])
            x, y = sample_batch(shard.tokens, B, T, gens[j])
            xs.append(x)
            ys.append(y)
        _, loss = model(torch.cat(xs), torch.cat(ys))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if inner.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), inner.grad_clip)
        opt.step()
        if (step + 1) % eval_every_steps == 0 or step + 1 == steps:
            record_eval(step + 1)
    ddp_bytes = 4 * n_params * steps  # each worker sends its fp32 gradient once per step
    return {
        "algo": "sync",
        "final_val_loss": curve[-1]["val_loss"],
        "tokens": steps * tokens_per_step,
        "tokens_computed": steps * tokens_per_step,
        "outer_steps": steps,
        "updates_accepted": steps * W,
        "updates_rejected": 0,
        "updates_dropped": 0,
        "bytes_up_per_worker": ddp_bytes,
        "ddp_bytes_up_per_worker": ddp_bytes,
        "bytes_reduction_vs_ddp": 1.0,
        "params": n_params,
        "wall_s": time.perf_counter() - t_start,
        "curve": curve,
        "manifest_root": corpus.manifest.root_hash,
        "config": cfg.to_dict(),
    }
