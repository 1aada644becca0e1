"""A multi-GPU node: `torchrun --nproc-per-node K -m trainnet worker ...` is ONE participant (one key, one
registration, one lease, one upload) that trains each task with FSDP2 (`fully_shard`) over its K local devices.

    torchrun --nproc-per-node 4 -m trainnet worker --coordinator https://example.org --state ~/.trainnet/w
    torchrun --nproc-per-node 2 -m trainnet worker --device cpu ...      # CPU ranks over gloo (tests)

Rank 0 is an ordinary Worker (worker/node.py: lease, versions, shards, error feedback, encode, sign, upload,
reveals, heartbeats); only its training step differs. For each task it broadcasts the task (JSON in a uint8
tensor: nothing is pickled) and the shard's tokens, scatters the base parameters into the sharded model
(`distribute_tensor` from rank 0), and every rank trains its slice of each batch: all ranks draw the task's
batch with the task's seed (train.local.sample_batch, as run_task) and rank r keeps rows [r*B/K, (r+1)*B/K).
FSDP2 averages the gradients, so with equal slices the step is the full batch's (uneven slices are weighted);
clipping and AdamW run on the shards. At the end every rank all-gathers the parameters and rank 0 delivers
base - local. One small all-reduce per step carries the loss and rank 0's stop flag, so a stop is seen by all
ranks at the same step; a stopped multi-rank task is given back (not paused). The same numerics as run_task up
to the order of floating-point reductions, well inside the audit tolerance. Other ranks ignore SIGINT/SIGTERM
and leave when rank 0 says so; their exit status is rank 0's.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from trainnet.models import ModelConfig, build_model
from trainnet.train.local import (
    TaskHParams,
    TaskResult,
    _loss_of,
    make_inner_optimizer,
    sample_batch,
    use_bf16,
)
from trainnet.train.partial import Partial, TaskHooks
from trainnet.worker.fit import FitCheck
from trainnet.worker.node import Worker, WorkerOptions
from trainnet.worker.status import StatusLine

ParamDict = dict[str, torch.Tensor]


class Ranks:
    """This process's place in the node's process group, and the node's sharded model."""

    def __init__(self, device: str) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = device
        self.comm = torch.device(device) if torch.device(device).type == "cuda" else torch.device("cpu")
        from torch.distributed.device_mesh import init_device_mesh

        self.mesh = init_device_mesh(torch.device(device).type, (self.world,))
        self.cfg: dict[str, Any] | None = None
        self.model: nn.Module | None = None

    # ------------------------------------------------------------------ broadcasts from rank 0
    def send(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        dist.broadcast(torch.tensor([len(data)], dtype=torch.int64, device=self.comm), 0)
        dist.broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.comm), 0)

    def recv(self) -> dict[str, Any]:
        n = torch.zeros(1, dtype=torch.int64, device=self.comm)
        dist.broadcast(n, 0)
        buf = torch.empty(int(n.item()), dtype=torch.uint8, device=self.comm)
        dist.broadcast(buf, 0)
        return json.loads(bytes(buf.cpu().numpy()))

    def tensor(self, t: torch.Tensor | None, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = t.to(self.comm) if t is not None else torch.empty(numel, dtype=dtype, device=self.comm)
        dist.broadcast(buf, 0)
        return buf.cpu()

    # ------------------------------------------------------------------ the sharded model and one task
    def setup(self, cfg: dict[str, Any]) -> None:
        """Build the run's model (same init on every rank) and shard it: each block of every ModuleList (the
        transformer layers), then the root (embeddings, tied head, final norm)."""
        if cfg == self.cfg:
            return
        from torch.distributed.fsdp import fully_shard

        torch.manual_seed(0)
        model = build_model(ModelConfig.from_dict(cfg)).to(self.device)
        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block, mesh=self.mesh)
        fully_shard(model, mesh=self.mesh)
        self.cfg, self.model = cfg, model

    def load(self, base: ParamDict | None) -> None:
        """Scatter rank 0's base parameters into every rank's shards."""
        from torch.distributed.tensor import distribute_tensor

        with torch.no_grad():
            for name, p in self.model.named_parameters():
                src = base[name] if base is not None else torch.empty(p.shape, dtype=p.dtype)
                p.copy_(distribute_tensor(src.to(self.device, p.dtype), self.mesh, p.placements))

    def train(self, spec: dict[str, Any], base: ParamDict | None, tokens: torch.Tensor,
              hooks: TaskHooks | None = None, stop: Any = None) -> TaskResult | None:
        """Run one task on every rank (spec: hparams, seed); rank 0 gets the TaskResult, None elsewhere or when
        stopped."""
        t0 = time.perf_counter()
        hp = TaskHParams(**spec["hparams"])
        self.load(base)
        model = self.model
        model.train()
        fused = torch.device(self.device).type == "cuda"
        opt = make_inner_optimizer(model, hp.lr, hp.weight_decay, hp.beta1, hp.beta2, fused=fused)
        gen = torch.Generator().manual_seed(int(spec["seed"]))
        lo, hi = self.rank * hp.batch_size // self.world, (self.rank + 1) * hp.batch_size // self.world
        weight = (hi - lo) * self.world / hp.batch_size  # FSDP averages over ranks: uneven slices weighted
        bf16 = use_bf16(hp.precision, self.device)
        tokens = tokens.to(self.device)
        losses: list[torch.Tensor] = []
        for step in range(hp.steps):
            for group in opt.param_groups:
                group["lr"] = hp.lr_at_step(step)
            x, y = sample_batch(tokens, hp.batch_size, hp.seq_len, gen)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16, enabled=bf16):
                loss = _loss_of(model(x[lo:hi].to(self.device), y[lo:hi].to(self.device)))
            (loss * weight).backward()
            if hp.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            opt.step()
            flag = 1.0 if stop is not None and stop() else 0.0
            stat = torch.tensor([float(loss.detach()) * (hi - lo) / hp.batch_size, flag], device=self.comm)
            dist.all_reduce(stat)
            losses.append(stat[0].cpu())
            if hooks is not None and hooks.on_step is not None:
                hooks.on_step(step + 1, float(stat[0]))
            if stat[1] > 0 and step + 1 < hp.steps:
                return None
        del opt
        full = {n: p.full_tensor().detach().to("cpu", torch.float32) for n, p in model.named_parameters()}
        if base is None:
            return None
        loss_t = torch.stack(losses)
        return TaskResult(delta={n: base[n] - full[n] for n in base}, tokens=hp.steps * hp.batch_size * hp.seq_len,
                          steps=hp.steps, loss_first=float(loss_t[0]), loss_last=float(loss_t[-1]),
                          loss_mean=float(loss_t.mean()), time_s=time.perf_counter() - t0)


class MultiWorker(Worker):
    """Rank 0: a Worker whose training step drives every rank."""

    def __init__(self, opts: WorkerOptions, ranks: Ranks, status: StatusLine | None = None) -> None:
        super().__init__(opts, status)
        self.ranks = ranks
        self.fit = FitCheck(self.device, opts.memory_gb, ranks=ranks.world)

    def _train(self, task: dict[str, Any], base: ParamDict, tokens: torch.Tensor, hp: TaskHParams,
               hooks: TaskHooks) -> TaskResult | Partial | None:
        if hooks.resume is not None:
            self.status.log("a paused task cannot resume on a multi-rank node; giving it back")
            return None
        if hp.batch_size < self.ranks.world:
            raise ValueError(f"batch_size {hp.batch_size} is smaller than the {self.ranks.world} ranks")
        cfg = self.model_cfg.to_dict()
        self.ranks.send({"op": "model", "model": cfg})
        self.ranks.setup(cfg)
        spec = {"op": "task", "hparams": hp.to_dict(), "seed": int(task["seed"]), "numel": tokens.numel(),
                "dtype": str(tokens.dtype).removeprefix("torch.")}
        self.ranks.send(spec)
        self.ranks.tensor(tokens.contiguous(), tokens.numel(), tokens.dtype)
        return self.ranks.train(spec, base, tokens, hooks, stop=self.stop.is_set)


def _follow(ranks: Ranks) -> int:
    """Ranks other than 0: do what rank 0 says until it says stop."""
    while True:
        cmd = ranks.recv()
        if cmd["op"] == "stop":
            return int(cmd.get("code", 0))
        if cmd["op"] == "model":
            ranks.setup(cmd["model"])
        elif cmd["op"] == "task":
            tokens = ranks.tensor(None, int(cmd["numel"]), getattr(torch, cmd["dtype"]))
            ranks.train(cmd, None, tokens)


def run_multi(opts: WorkerOptions, status: StatusLine | None = None) -> int:
    """The worker under torchrun (WORLD_SIZE > 1): exit status is rank 0's Worker's."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = opts.device.startswith("cuda") or (opts.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local)
    device = f"cuda:{local}" if cuda else opts.device if opts.device != "auto" else "cpu"
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        ranks = Ranks(device)
    except BaseException:
        dist.destroy_process_group()
        raise
    if ranks.rank != 0:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        code = _follow(ranks)
        _leave_group()
        # Skip interpreter finalization: gloo's worker threads can still hold tensors with Python references,
        # and freeing them while the interpreter is torn down aborts the process (SIGABRT, "terminate called
        # without an active exception"), turning a clean stop into a failed torchrun. This rank owns no files
        # or network state; its only output is what it printed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    code = 1
    try:
        opts.device = device
        code = MultiWorker(opts, ranks, status).run()
    finally:
        ranks.send({"op": "stop", "code": code})
        _leave_group()
    return code


def _leave_group() -> None:
    """Every rank reaches this point before any tears its connections down (a peer that closes its sockets
    while another is still inside a collective makes gloo abort that one)."""
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
