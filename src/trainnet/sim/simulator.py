"""Simulate N virtual workers against the coordinator's own service layer, in one process, on a virtual clock.

    result = simulate(load_config("bench/standard.toml"))
    result["final_val_loss"], result["bytes_up_per_worker"], result["stale_refusals"]

The coordinator here is the one that ships: the same `Api` the HTTP server calls (request signatures with real
ed25519 keys, replay counters, audits with reveals and deadlines, bans, durable row-level commits to a state
store), the same engine, and the same data plane (aggregator merge tasks, signed published versions in a blob
store). Only the sockets and the clock are replaced. Each virtual worker has a speed (log-normal spread plus an
optional slow tail), may join late or leave for good, loses each task with probability `dropout` (it vanishes
mid-task, its lease expires and the shard is handed out again) and delays its uploads by an exponential lag.
Tasks really run (`run_task`, as the worker and verifier), uploads are real encoded bytes, and every worker's
downloads are counted from the published manifests as it would fetch them.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from trainnet.aggregate import keys
from trainnet.aggregate.publish import Reconstructor
from trainnet.config import RunConfig
from trainnet.data.corpus import Corpus
from trainnet.protocol.messages import TaskSpec
from trainnet.protocol.wire import decode_update
from trainnet.server.limits import ApiError, ServerLimits
from trainnet.server.runspec import RunSpec, build_model
from trainnet.server.runtime import Runtime
from trainnet.sim.client import SimNode, refused
from trainnet.sim.security import Security
from trainnet.store.blob_memory import MemoryBlobStore
from trainnet.store.state_memory import MemoryStateStore
from trainnet.train.local import TaskHParams, run_task
from trainnet.verify.commit import CommittingUploader
from trainnet.worker.reveal import reveal_body


@dataclass
class VirtualWorker:
    idx: int
    node: SimNode
    speed: float
    join_at: float
    leave_at: float
    uploader: CommittingUploader
    malicious: bool = False
    registered: bool = False
    have: int | None = None  # the model version this worker holds (download accounting)
    tasks_done: int = 0
    tasks_lost: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    steps_done: int = 0
    residuals: dict[str, tuple[dict, dict]] = field(default_factory=dict)

    @property
    def node_id(self) -> str:
        return self.node.node_id


def make_workers(cfg: RunConfig, horizon_s: float) -> list[VirtualWorker]:
    """Worker speeds, arrivals, departures and keys, all drawn from the run seed."""
    s = cfg.sim
    rng = random.Random(s.seed * 7919 + 17)
    keys_rng = random.Random(s.seed * 31 + 5)
    n_slow, n_late = round(s.slow_fraction * s.workers), round(s.late_fraction * s.workers)
    n_gone = round(s.depart_fraction * s.workers)
    order = list(range(s.workers))
    rng.shuffle(order)
    slow, late, gone = set(order[:n_slow]), set(order[n_slow:n_slow + n_late]), set(order[-n_gone:] if n_gone else [])
    workers = []
    for i in range(s.workers):
        speed = math.exp(rng.gauss(0.0, s.speed_sigma)) if s.speed_sigma > 0 else 1.0
        if i in slow:
            speed *= s.slow_factor
        join_at = rng.uniform(0, 0.3 * horizon_s) if i in late else 0.0
        leave_at = rng.uniform(0.3 * horizon_s, 0.8 * horizon_s) if i in gone else math.inf
        workers.append(VirtualWorker(i, SimNode.make(i, keys_rng), speed, join_at, leave_at,
                                     CommittingUploader(s.codec)))
    return workers


class Models:
    """Published versions as the workers rebuild them (each version rebuilt once, from the blob store), and
    what each download costs a worker that holds version `have`."""

    def __init__(self, spec: RunSpec, blobs: MemoryBlobStore, keep: int) -> None:
        self.spec, self.blobs, self.keep = spec, blobs, keep
        self.flat: dict[int, torch.Tensor] = {}
        self.manifests: dict[int, dict[str, Any]] = {}
        self.recon = Reconstructor(self.manifest, blobs.get, spec.layout.numel)

    def manifest(self, v: int) -> dict[str, Any]:
        if v not in self.manifests:
            self.manifests[v] = json.loads(self.blobs.get(keys.manifest(v)))
        return self.manifests[v]

    def params(self, v: int) -> dict[str, torch.Tensor]:
        if v not in self.flat:
            prev = max((u for u in self.flat if u < v), default=None)
            self.flat[v] = self.recon.get(v, (prev, self.flat[prev]) if prev is not None else None)
        x = self.flat[v]
        for old in sorted(self.flat)[:-self.keep]:
            if old != v:  # a stale task's base may be older than the versions kept: it is still returned
                del self.flat[old]
        return self.spec.layout.unflatten(x)

    def download_bytes(self, target: int, have: int | None) -> int:
        start, deltas = self.recon.plan(target, have if have is not None and have <= target else None)
        n = sum(c["nbytes"] for c in self.manifest(start)["full"]["chunks"]) if start is not None else 0
        for v in deltas:
            n += sum(s["nbytes"] for s in self.manifest(v)["delta"]["shards"])
        return n + 1024 * (len(deltas) + 1)  # + the manifests (about a kilobyte each)


IDLE_WAIT_MAX_S = 30.0  # the worker's max_wait_s


def sim_limits(cfg: RunConfig) -> ServerLimits:
    """The server's limits, with what only makes sense across a network turned off (rate limits: virtual
    workers share no address and no clock skew) and the verifier's wall-clock budget unbounded."""
    return ServerLimits(rate_per_s=0.0, ip_rate_per_s=0.0, register_per_ip_per_min=0.0, max_skew_s=1e12,
                        verify_budget_s=1e9)


def simulate(cfg: RunConfig, on_progress: Callable[[dict[str, Any]], None] | None = None,
             corpus: Corpus | None = None) -> dict[str, Any]:
    """Run the asynchronous protocol in simulation and return the measured result dict."""
    t_start = time.perf_counter()
    s = cfg.sim
    if s.threads:
        torch.set_num_threads(s.threads)
    spec = RunSpec.load(cfg, corpus)
    if s.init:  # a local safetensors file of initial parameters (a pre-trained model to fine-tune)
        from safetensors.torch import load_file

        init = load_file(s.init)
        spec.__dict__["template"] = {k: init[k].float().clone() for k in spec.template}
    now_box = [0.0]
    state, blobs = MemoryStateStore(), MemoryBlobStore()
    rt = Runtime.open(cfg, "memory:", "memory:", sim_limits(cfg), aggregators=1, evaluate=False, sync=True,
                      state=state, blobs=blobs, spec=spec, clock=lambda: now_box[0])
    svc, api, core = rt.svc, rt.api, rt.svc.core
    rt.drain(0.0)
    model = build_model(cfg, seed=0)
    models = Models(spec, blobs, keep=cfg.consensus.max_staleness + 3)
    steps_total = s.tokens / (cfg.inner.batch_size * cfg.model.block_size)
    horizon = steps_total / s.workers * s.step_s / max(1e-9, 1 - s.dropout)
    workers = make_workers(cfg, horizon)
    sec = Security(cfg, spec.corpus, workers)
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
    stats = {"tasks_lost": 0, "steps_wasted": 0, "steps_computed": 0, "bytes_up": 0, "uploads": 0,
             "verify_events": 0}
    last_eval = [-1]

    def record_eval(now: float) -> None:
        loss = spec.heldout_loss(models.params(core.version), model)
        last_eval[0] = core.outer_steps
        curve.append({"tokens": core.tokens_accepted, "outer_steps": core.outer_steps, "version": core.version,
                      "val_loss": loss, "sim_time_s": now, "wall_s": time.perf_counter() - t_start})
        if on_progress:
            on_progress(curve[-1] | {"tokens_target": s.tokens})

    def settle(now: float) -> None:
        """The data plane finishes what is due (merges take no virtual time here, as before)."""
        now_box[0] = now
        rt.drain(now)

    record_eval(0.0)
    now = 0.0
    events = 0
    bans_seen = core.nodes_banned
    while heap and not core.done and events < 10_000_000:
        events += 1
        now, _, kind, wi, payload = heapq.heappop(heap)
        now_box[0] = now
        if kind == "tick":
            svc.tick(now)
            settle(now)
            push(now + tick_s, "tick", -1)
        elif kind == "free":
            _free(workers[wi], now, api, core, models, rng, cfg, push, stats)
        elif kind == "done":
            _done(workers[wi], payload, now, api, models, model, spec, cfg, sec, rng, push, stats)
        elif kind == "arrive":
            _arrive(workers[wi], payload, now, api, core, sec, push, stats, cfg)
            settle(now)
        elif kind == "verify":
            stats["verify_events"] += 1
            api.audits.verify_once(now)
            settle(now)
        if core.nodes_banned != bans_seen:  # the outer step at which each node was banned (rounds_to_ban)
            bans_seen = core.nodes_banned
            for n in core.nodes.values():
                if n.banned and n.node_id not in sec.ban_steps:
                    sec.ban_steps[n.node_id] = core.outer_steps
        if core.outer_steps != last_eval[0] and (core.outer_steps % s.eval_every == 0 or core.done):
            record_eval(now)
    settle(now)
    if curve[-1]["version"] != core.version:
        record_eval(now)
    return _result(cfg, spec, core, svc, workers, stats, curve, now, t_start, models) | sec.report(
        core, model, models.params(core.version), stats["steps_computed"] + stats["steps_wasted"])


def _free(w: VirtualWorker, now: float, api: Any, core: Any, models: Models, rng: random.Random, cfg: RunConfig,
          push: Callable, stats: dict[str, int]) -> None:
    s = cfg.sim
    if now >= w.leave_at:
        return
    if not w.registered:
        w.node.register(api, now)
        w.registered = True
    try:
        reply = w.node.lease(api, now)
    except ApiError as exc:
        if exc.code == "banned":
            return
        raise
    task = reply.get("task")
    for task_id in reply.get("reveals_due") or []:
        _reveal(w, task_id, api, now)
    if not task:
        after = reply.get("retry_after_s")
        if after is not None and reply.get("reason") not in ("done", "banned"):
            # As the worker does (worker/node.py): the server's retry time, at least 0.1 s and at most 30 s.
            push(now + min(max(float(after), 0.1), IDLE_WAIT_MAX_S), "free", w.idx)
        return
    spec = TaskSpec(**task)
    w.bytes_down += models.download_bytes(spec.base_version, w.have)
    w.have = spec.base_version
    duration = spec.hparams["steps"] * s.step_s / w.speed
    vanish = rng.random() < s.dropout
    if vanish or now + duration >= w.leave_at:
        cut = rng.random() * duration if vanish else w.leave_at - now
        w.tasks_lost += 1
        stats["tasks_lost"] += 1
        stats["steps_wasted"] += int(spec.hparams["steps"] * cut / duration)
        if vanish:
            push(now + cut + s.downtime_s, "free", w.idx)
    else:
        push(now + duration, "done", w.idx, spec)


def _done(w: VirtualWorker, spec: TaskSpec, now: float, api: Any, models: Models, model: torch.nn.Module,
          rs: RunSpec, cfg: RunConfig, sec: Security, rng: random.Random, push: Callable,
          stats: dict[str, int]) -> None:
    base = models.params(spec.base_version)
    if w.malicious:
        delta, steps = sec.malicious_update(model, spec, base, w)
    else:
        shard = rs.corpus.shard(spec.shard_id, expect_sha256=spec.shard_sha256)
        res = run_task(model, base, shard.tokens, TaskHParams(**spec.hparams), seed=spec.seed)
        delta, steps = res.delta, spec.hparams["steps"]
    stats["steps_computed"] += steps
    w.steps_done += steps
    data = w.uploader.encode(delta, spec, w.node_id)
    w.residuals[spec.task_id] = w.uploader.last_residuals
    stats["bytes_up"] += len(data)
    stats["uploads"] += 1
    w.bytes_up += len(data)
    lag = rng.expovariate(1.0 / cfg.sim.lag_s) if cfg.sim.lag_s > 0 else 0.0
    push(now + lag, "arrive", w.idx, (spec, data))


def _arrive(w: VirtualWorker, payload: tuple[TaskSpec, bytes], now: float, api: Any, core: Any, sec: Security,
            push: Callable, stats: dict[str, int], cfg: RunConfig) -> None:
    spec, data = payload
    try:
        reply = w.node.upload(api, spec.to_dict(), data, now)
    except ApiError as exc:
        reply = refused(exc)
    if reply.get("accepted"):
        w.tasks_done += 1
        if not w.malicious:
            sec.observe_honest(data)
        audit = reply.get("audit") or {}
        if audit.get("reveal"):
            _reveal(w, spec.task_id, api, now)
        if spec.task_id in core.audits:  # the built-in verifier takes steps x step_s / verifier_speed
            push(now + spec.hparams["steps"] * cfg.sim.step_s / cfg.sim.verifier_speed, "verify", -1)
    else:
        stats["steps_wasted"] += spec.hparams["steps"]
        w.residuals.pop(spec.task_id, None)
        w.uploader.refused()  # the residual goes back to this task's r_in (the real worker does the same)
    if reply.get("reason") != "banned":
        push(now, "free", w.idx)


def _reveal(w: VirtualWorker, task_id: str, api: Any, now: float) -> None:
    kept = w.residuals.get(task_id)
    if kept is None:
        return
    try:
        w.node.reveal(api, task_id, reveal_body(*kept), now)
    except ApiError:
        pass  # already revealed, or the audit is gone (its node was banned meanwhile)
    w.residuals.pop(task_id, None)


def _result(cfg: RunConfig, spec: RunSpec, core: Any, svc: Any, workers: list[VirtualWorker], stats: dict[str, int],
            curve: list[dict[str, float]], now: float, t_start: float, models: Models) -> dict[str, Any]:
    s = cfg.sim
    n_params = spec.layout.numel
    tokens_per_step = cfg.inner.batch_size * cfg.model.block_size
    ddp_bytes = 4 * n_params * core.tokens_accepted / (tokens_per_step * s.workers)
    st = core.status()
    versions = max(core.version, 1)
    down = sum(w.bytes_down for w in workers)
    rounds = sum(1 for w in workers for _ in range(w.tasks_done + w.tasks_lost))
    return {
        "algo": "async", "final_val_loss": curve[-1]["val_loss"], "tokens": core.tokens_accepted,
        "tokens_computed": (stats["steps_computed"] + stats["steps_wasted"]) * tokens_per_step,
        "outer_steps": core.outer_steps, "versions": core.version, "updates_accepted": st["updates_accepted"],
        "updates_rejected": st["updates_rejected"], "reject_reasons": st["reject_reasons"],
        "stale_refusals": st["reject_reasons"].get("too_stale", 0),
        "stale_refusal_share": st["reject_reasons"].get("too_stale", 0) / max(1, st["updates_accepted"]
                                                                           + st["updates_rejected"]),
        "updates_dropped": stats["tasks_lost"], "leases_expired": st["leases_expired"],
        "quorum_final": st["quorum"], "uploads": stats["uploads"], "bytes_up_total": stats["bytes_up"],
        "bytes_up_per_worker": stats["bytes_up"] / s.workers, "ddp_bytes_up_per_worker": ddp_bytes,
        "bytes_reduction_vs_ddp": ddp_bytes / max(stats["bytes_up"] / s.workers, 1e-9),
        "bytes_down_total": down, "bytes_down_per_worker": down / s.workers,
        "download_bits_per_param_per_task": 8 * down / max(1, rounds) / n_params,
        "download_bits_per_param_per_version": 8 * down / s.workers / versions / n_params,
        "params": n_params, "sim_time_s": now, "wall_s": time.perf_counter() - t_start, "curve": curve,
        "persistence_rows_per_commit": (sum(svc.commit_rows) / len(svc.commit_rows)) if svc.commit_rows else None,
        "nodes": [{"node_id": w.node_id, "speed": w.speed, "join_at": w.join_at,
                   "leave_at": None if math.isinf(w.leave_at) else w.leave_at, "tasks_done": w.tasks_done,
                   "tasks_lost": w.tasks_lost, "bytes_up": w.bytes_up, "bytes_down": w.bytes_down,
                   "tokens_accepted": core.nodes[w.node_id].tokens_accepted if w.node_id in core.nodes else 0}
                  for w in workers],
        "manifest_root": spec.corpus.manifest.root_hash, "config": cfg.to_dict(),
    }


def decode_flat(data: bytes) -> torch.Tensor:
    upd = decode_update(data)
    return torch.cat([t.reshape(-1).float() for t in upd.tensors.values()])
