"""Simulate N virtual workers against the real `Coordinator`, in one process, on a virtual clock.

    result = simulate(load_config("bench/standard.toml"))
    result["final_val_loss"], result["bytes_up_per_worker"]

Each virtual worker has a speed (log-normal spread plus an optional slow tail), may join late, may
leave for good, loses each task with probability `dropout` (it vanishes mid-task and comes back
after `downtime_s`; its lease expires and the shard is handed out again) and delays its uploads by
an exponential lag. Tasks really run: the same `run_task` the worker and verifier use computes every
update that reaches the coordinator, and its upload is serialized to count real bytes. Work that
never reaches the coordinator is not computed (it cannot change the model), but its steps are
counted as wasted compute.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from trainnet.config import RunConfig
from trainnet.coordinator.core import Coordinator, CoordinatorConfig
from trainnet.data.corpus import Corpus, load_run_corpus
from trainnet.model.gpt import GPT
from trainnet.models import build_model
from trainnet.protocol.messages import LeaseRequest, NoTask, Register, TaskSpec, UpdateSubmission
from trainnet.protocol.wire import decode_update
from trainnet.sim.security import Security
from trainnet.sim.upload import Uploader, decode_upload
from trainnet.train.local import TaskHParams, evaluate, flatten, params_of, run_task


@dataclass
class VirtualWorker:
    idx: int
    node_id: str
    speed: float
    join_at: float
    leave_at: float
    uploader: Any = None  # Uploader, or CommittingUploader when verification is on
    malicious: bool = False
    registered: bool = False
    tasks_done: int = 0
    tasks_lost: int = 0
    bytes_up: int = 0
    steps_done: int = 0


def task_precision(cfg: RunConfig) -> str:
    """The precision every task of the run trains in: inner.precision, with "auto" pinned to "fp32" when
    tasks are verified (the worker's device must not decide numerics that an audit replays)."""
    p = cfg.inner.precision
    return "fp32" if p == "auto" and cfg.consensus.verify_rate > 0 else p


def coordinator_config(cfg: RunConfig) -> CoordinatorConfig:
    c, i, s = cfg.consensus, cfg.inner, cfg.sim
    return CoordinatorConfig(
        run_id=cfg.name, tokens_target=s.tokens, seed=s.seed, h=c.h, h_start=c.h_start, h_ramp=c.h_ramp,
        batch_size=i.batch_size, seq_len=cfg.model.block_size, lr=i.lr, lr_warmup=i.warmup_tokens,
        min_lr_ratio=i.min_lr_ratio, weight_decay=i.weight_decay, beta1=i.beta1, beta2=i.beta2,
        grad_clip=i.grad_clip, precision=task_precision(cfg), outer_lr=c.outer_lr, outer_momentum=c.outer_momentum, nesterov=c.nesterov,
        quorum=c.quorum, grace_s=c.grace_s, min_updates=c.min_updates, max_staleness=c.max_staleness,
        staleness_power=c.staleness_power, stale_mode=c.stale_mode, partial_scaling=c.partial_scaling, token_weighting=c.token_weighting, aggregator=c.aggregator,
        lease_s=c.lease_s, max_leases_per_node=c.max_leases_per_node,
        warm_start_tokens=round(c.warm_start * s.tokens),
        verify_rate=c.verify_rate, verify_probation=c.verify_probation, ban_after_failures=c.ban_after_failures,
        **({"audit_key": c.audit_key} if c.audit_key else {}),
        shard_groups=0 if s.iid else s.workers,
    )


def make_workers(cfg: RunConfig, horizon_s: float) -> list[VirtualWorker]:
    """Worker speeds, arrivals and departures, all drawn from the run seed."""
    s = cfg.sim
    rng = random.Random(s.seed * 7919 + 17)
    n_slow = round(s.slow_fraction * s.workers)
    n_late = round(s.late_fraction * s.workers)
    n_gone = round(s.depart_fraction * s.workers)
    order = list(range(s.workers))
    rng.shuffle(order)
    slow, late, gone = set(order[:n_slow]), set(order[n_slow : n_slow + n_late]), set(order[-n_gone:] if n_gone else [])
    workers = []
    for i in range(s.workers):
        speed = math.exp(rng.gauss(0.0, s.speed_sigma)) if s.speed_sigma > 0 else 1.0
        if i in slow:
            speed *= s.slow_factor
        join_at = rng.uniform(0, 0.3 * horizon_s) if i in late else 0.0
        leave_at = rng.uniform(0.3 * horizon_s, 0.8 * horizon_s) if i in gone else math.inf
        workers.append(VirtualWorker(i, f"w{i:03d}", speed, join_at, leave_at))
    return workers


def simulate(cfg: RunConfig, on_progress: Callable[[dict[str, Any]], None] | None = None,
             corpus: Corpus | None = None) -> dict[str, Any]:
    """Run the asynchronous protocol in simulation and return the measured result dict."""
    t_start = time.perf_counter()
    s = cfg.sim
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    corpus = corpus or load_run_corpus(cfg)
    model = build_model(cfg.model)
    if s.init:  # a local file named by the user (safetensors: no pickle)
        from safetensors.torch import load_file

        from trainnet.train.local import load_params
        load_params(model, load_file(s.init))
    init = params_of(model)
    coord = Coordinator(coordinator_config(cfg), corpus.manifest, init)
    n_params = coord.num_params
    val_tokens = [corpus.shard(i).tokens for i in corpus.manifest.ids("val")]
    # A rough horizon (virtual seconds) to place late joins and departures inside the run.
    steps_total = s.tokens / (cfg.inner.batch_size * cfg.model.block_size)
    horizon = steps_total / s.workers * s.step_s / max(1e-9, 1 - s.dropout)
    workers = make_workers(cfg, horizon)
    sec = Security(cfg, model, corpus, coord) if Security.wanted(cfg) else None
    for w in workers:
        w.uploader = sec.uploader() if sec else Uploader(s.codec)
        w.malicious = bool(sec and sec.is_malicious(w.idx))
    rng = random.Random(s.seed * 104729 + 3)
    heap: list[tuple[float, int, str, int, Any]] = []
    seq = 0

    def push(t: float, kind: str, w: int, payload: Any = None) -> None:
        nonlocal seq
        heapq.heappush(heap, (t, seq, kind, w, payload))
        seq += 1

    for w in workers:
        push(w.join_at, "free", w.idx)
    tick_s = max(min(cfg.consensus.grace_s, cfg.consensus.lease_s) / 4, s.step_s)
    push(0.0, "tick", -1)

    curve: list[dict[str, float]] = []
    stats = {"tasks_lost": 0, "steps_wasted": 0, "steps_computed": 0, "bytes_up": 0, "uploads": 0}
    last_eval_step = -1

    def record_eval(now: float) -> None:
        nonlocal last_eval_step
        loss = evaluate(model, coord.params(), val_tokens, s.eval_batches, s.eval_batch_size, cfg.model.block_size)
        last_eval_step = coord.outer_steps
        curve.append({"tokens": coord.tokens_accepted, "outer_steps": coord.outer_steps, "val_loss": loss,
                      "sim_time_s": now, "wall_s": time.perf_counter() - t_start})
        if on_progress:
            on_progress(curve[-1] | {"tokens_target": s.tokens})

    record_eval(0.0)
    now = 0.0
    max_events = 10_000_000
    while heap and not coord.done and max_events > 0:
        max_events -= 1
        now, _, kind, wi, payload = heapq.heappop(heap)
        if kind == "tick":
            coord.tick(now)
            push(now + tick_s, "tick", -1)
        elif kind == "free":
            w = workers[wi]
            if now >= w.leave_at:
                continue
            if not w.registered:
                coord.register(Register(w.node_id), now)
                w.registered = True
            reply = coord.lease(LeaseRequest(w.node_id), now)
            if isinstance(reply, NoTask):
                if math.isfinite(reply.retry_after_s):
                    push(now + min(reply.retry_after_s, tick_s), "free", wi)
                continue
            base = {k: v.clone() for k, v in coord.params().items()}
            duration = reply.hparams["steps"] * s.step_s / w.speed
            vanish = rng.random() < s.dropout
            if vanish or now + duration >= w.leave_at:
                cut = rng.random() * duration if vanish else w.leave_at - now
                w.tasks_lost += 1
                stats["tasks_lost"] += 1
                stats["steps_wasted"] += int(reply.hparams["steps"] * cut / duration)
                if vanish:
                    push(now + cut + s.downtime_s, "free", wi)
            else:
                push(now + duration, "done", wi, (reply, base))
        elif kind == "done":
            w = workers[wi]
            spec, base = payload
            if sec and coord.nodes[w.node_id].banned:
                continue  # a banned node's work is refused anyway; it gets no new task
            if w.malicious:
                data, steps = sec.malicious_upload(model, spec, base, w)
                stats["steps_computed"] += steps
            else:
                data = _train_and_encode(model, corpus, spec, base, cfg, w)
                stats["steps_computed"] += spec.hparams["steps"]
            if sec:
                sec.remember(spec.task_id, base, w.uploader)
            stats["bytes_up"] += len(data)
            stats["uploads"] += 1
            w.bytes_up += len(data)
            lag = rng.expovariate(1.0 / s.lag_s) if s.lag_s > 0 else 0.0
            push(now + lag, "arrive", wi, (spec, data))
        elif kind == "arrive":
            w = workers[wi]
            spec, data = payload
            if sec:
                decoded = decode_update(data)
                delta, extra = decoded.tensors, decoded.header.extra
            else:
                delta = decode_upload(data)
            reply = coord.submit(
                UpdateSubmission(w.node_id, spec.task_id, spec.base_version, delta, spec.tokens,
                                 spec.hparams["steps"], wire_bytes=len(data)),
                now,
            )
            if reply.accepted:
                w.tasks_done += 1
            else:
                stats["steps_wasted"] += spec.hparams["steps"]
            if sec:
                if reply.accepted and not w.malicious:
                    sec.observe_honest(flatten(delta, coord.template))
                delay = sec.after_submit(w, spec, extra, now)
                if delay is not None:
                    push(now + delay, "verify", wi, spec.task_id)
            push(now, "free", wi)
        elif kind == "verify":
            sec.verify(payload, now)
        if coord.outer_steps != last_eval_step and (
            coord.outer_steps % s.eval_every == 0 or coord.done
        ):
            record_eval(now)
    if curve[-1]["outer_steps"] != coord.outer_steps:
        record_eval(now)
    tokens_per_step = cfg.inner.batch_size * cfg.model.block_size
    ddp_bytes = 4 * n_params * coord.tokens_accepted / (tokens_per_step * s.workers)
    st = coord.status()
    return {
        "algo": "async",
        "final_val_loss": curve[-1]["val_loss"],
        "tokens": coord.tokens_accepted,
        "tokens_computed": (stats["steps_computed"] + stats["steps_wasted"]) * tokens_per_step,
        "outer_steps": coord.outer_steps,
        "updates_accepted": st["updates_accepted"],
        "updates_rejected": st["updates_rejected"],
        "reject_reasons": st["reject_reasons"],
        "updates_dropped": stats["tasks_lost"],
        "leases_expired": st["leases_expired"],
        "uploads": stats["uploads"],
        "bytes_up_total": stats["bytes_up"],
        "bytes_up_per_worker": stats["bytes_up"] / s.workers,
        "ddp_bytes_up_per_worker": ddp_bytes,
        "bytes_reduction_vs_ddp": ddp_bytes / max(stats["bytes_up"] / s.workers, 1e-9),
        "params": n_params,
        "sim_time_s": now,
        "wall_s": time.perf_counter() - t_start,
        "curve": curve,
        "nodes": [
            {"node_id": w.node_id, "speed": w.speed, "join_at": w.join_at,
             "leave_at": None if math.isinf(w.leave_at) else w.leave_at, "tasks_done": w.tasks_done,
             "tasks_lost": w.tasks_lost, "bytes_up": w.bytes_up,
             "tokens_accepted": coord.nodes[w.node_id].tokens_accepted if w.node_id in coord.nodes else 0}
            for w in workers
        ],
        "manifest_root": corpus.manifest.root_hash,
        "config": cfg.to_dict(),
    } | (sec.report(workers, stats["steps_computed"] + stats["steps_wasted"]) if sec else {})


def _train_and_encode(model: GPT, corpus: Corpus, spec: TaskSpec, base: dict, cfg: RunConfig,
                      w: VirtualWorker) -> bytes:
    shard = corpus.shard(spec.shard_id, expect_sha256=spec.shard_sha256)
    hp = TaskHParams(**spec.hparams)
    result = run_task(model, base, shard.tokens, hp, seed=spec.seed)
    w.steps_done += hp.steps
    return w.uploader.encode(result.delta, spec, w.node_id)
