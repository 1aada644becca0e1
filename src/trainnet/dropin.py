"""Drop-in API: keep your own training loop; TrainNet handles leases, the pseudo-gradient at the end of each
task's H steps, compression, signing, upload, and loading the next global model version (docs/DROPIN.md).

    opt = trainnet.DistributedOptimizer("http://127.0.0.1:8470", state_dir="node0")
    model = opt.model                              # the run's model (or pass model=yours: same parameter names)
    for x, y in opt.batches():                     # the leased task's windows; ends when the run is done
        _, loss = model(x, y)
        loss.backward()
        opt.step()                                 # inner AdamW step; every H steps: deliver, load the new model
        opt.zero_grad()
    opt.close()

Like hivemind's Optimizer wrapping a torch optimizer, but the protocol is the CLI worker's own: the same
NodeSession (worker/session.py) registers, leases, fetches versions, keeps the error-feedback residual,
encodes, signs, uploads and reveals. Only the training loop is yours.

Two ways to feed data:
  * `batches()`: the task's own windows (its shard and sample seed), with the task's AdamW (optimizer=None),
    lr schedule and grad clipping: the update is then the one `run_task` computes, so it passes the
    coordinator's audits (recomputation of sampled tasks; bit-identical on CPU).
  * your own data (and optionally your own optimizer: its state is reset at every task, as the inner optimizer
    is): call `opt.step()` (or `participant.after_step()`) once per step. Such updates cannot be recomputed from
    the task's public inputs, so only runs with verification off (`--verify-rate 0`) accept them for long.

`Participant` is the loop-agnostic core (after_step() once per optimizer step); `DistributedOptimizer` wraps a
torch optimizer around it; `trainnet.dropin_hf.TrainNetCallback` drives it from a Hugging Face Trainer.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from trainnet.train.local import TaskHParams, TaskResult, make_inner_optimizer, sample_batch, use_bf16
from trainnet.worker.client import ApiError, Stopped
from trainnet.worker.phases import Deliveries, Heartbeat
from trainnet.worker.session import (
    NodeSession,
    RunDone,
    SessionOptions,
    task_hparams,
)
from trainnet.worker.status import StatusLine
from trainnet.worker.store import ModelFormatError


class _Log(StatusLine):
    """Log lines to a callable (print by default), no live status line."""

    def __init__(self, log: Callable[[str], None] | None) -> None:
        super().__init__(enabled=False)
        self._fn = log

    def log(self, msg: str) -> None:
        if self._fn is not None:
            self._fn(msg)
        else:
            super().log(msg)


def bind_parameters(model: nn.Module, template: dict[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    """The run's parameter names -> `model`'s parameters: the same names, or the same names under a common
    prefix of the run's (e.g. a transformers model for a run of spec "hf", whose names start with "hf.").
    Raises ValueError naming what differs."""
    ours = dict(model.named_parameters())
    for prefix in ("", *sorted({n.split(".", 1)[0] + "." for n in template if "." in n})):
        if all(n.startswith(prefix) for n in template) and {n[len(prefix):] for n in template} == set(ours):
            bound = {n: ours[n[len(prefix):]] for n in template}
            bad = [n for n, p in bound.items() if tuple(p.shape) != tuple(template[n].shape)]
            if bad:
                raise ValueError(f"parameter {bad[0]} has shape {tuple(bound[bad[0]].shape)}, the run's model "
                                 f"{tuple(template[bad[0]].shape)}")
            return bound
    missing = sorted(set(template) - set(ours))[:3]
    raise ValueError(f"the model's parameters are not the run's (e.g. missing {missing}); build it with "
                     "trainnet.models.build_model(run model config), or use Participant(...).model")


def _loss_of(out: Any) -> torch.Tensor | None:
    if isinstance(out, tuple) and out:
        out = out[-1]
    loss = getattr(out, "loss", out)  # transformers ModelOutput
    return loss.detach() if isinstance(loss, torch.Tensor) and loss.dim() == 0 else None


class Participant:
    """One TrainNet node whose training loop is the caller's: call after_step() after every optimizer step."""

    def __init__(self, coordinator: str, model: nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, *, state_dir: str | Path = "trainnet-node",
                 device: str = "auto", join_token: str | None = None, retry_budget_s: float = 300.0,
                 overlap: bool = True, max_tasks: int | None = None, follow_task_lr: bool = True,
                 clip_grad: bool = True, log: Callable[[str], None] | None = None) -> None:
        self.session = NodeSession(SessionOptions(coordinator, Path(state_dir).expanduser(), device, join_token,
                                                  retry_budget_s), status=_Log(log))
        s = self.session
        s.connect()
        self.device = s.device
        self.model = model if model is not None else s.model
        self.model.to(self.device)
        self.params = bind_parameters(self.model, s.template)
        self.user_optimizer = optimizer
        self.optimizer: torch.optim.Optimizer | None = optimizer
        self.follow_task_lr, self.clip_grad = follow_task_lr, clip_grad
        self.max_tasks = max_tasks
        self.done = False  # the run is over (or max_tasks reached): stop training
        self.task: dict[str, Any] | None = None
        self.hp: TaskHParams | None = None
        self.step_in_task = 0
        self.tasks_trained = 0
        self._base: dict[str, torch.Tensor] = {}
        self._tokens: torch.Tensor | None = None
        self._gen: torch.Generator | None = None
        self._losses: list[torch.Tensor] = []
        self._last_loss: torch.Tensor | None = None
        self._t0 = 0.0
        self._beat: Heartbeat | None = None
        self._down0 = 0
        self._deliveries = Deliveries(s) if overlap and s.max_leases >= 2 else None
        if self._deliveries is not None:
            self._deliveries.start()
        self._hook = self.model.register_forward_hook(self._capture_loss)
        self.begin()  # the model holds the first task's base before the caller's first forward

    # ------------------------------------------------------------------ the loop's side
    def begin(self) -> bool:
        """Hold a task (lease it, load its base model into the model, reset the optimizer); False when the run is
        done. Called by batches() and after_step(); call it yourself before the first forward of your own loop."""
        if self.task is None and not self.done:
            self._next_task()
        return not self.done

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The leased task's training windows (x, y), one per step, task after task, until the run is done.
        Call the optimizer's step once per batch."""
        while self.begin():
            assert self.hp is not None and self._tokens is not None and self._gen is not None
            x, y = sample_batch(self._tokens, self.hp.batch_size, self.hp.seq_len, self._gen)
            yield x.to(self.device), y.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's numerics for this task (bf16 autocast when the task's precision asks for it here)."""
        hp = self.hp
        on = hp is not None and use_bf16(hp.precision, self.device)
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16, enabled=on)

    def before_step(self) -> None:
        """The task's lr for this step and its gradient clipping (run_task's order: clip, then step)."""
        if not self.begin():
            return
        hp, opt = self.hp, self.optimizer
        if opt is not None and (self.follow_task_lr or self.user_optimizer is None):
            for group in opt.param_groups:
                group["lr"] = hp.lr_at_step(self.step_in_task)
        if self.clip_grad and hp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), hp.grad_clip)

    def after_step(self) -> None:
        """One optimizer step was taken. At the task's H-th: the pseudo-gradient base - local is delivered
        (encoded, signed, uploaded; on a background thread when the run allows two leases per node), and the
        next task's base model is loaded into the model before this returns."""
        if self.task is None:
            return
        self.step_in_task += 1
        if self._last_loss is not None:
            self._losses.append(self._last_loss)
            self._last_loss = None
        hp = self.hp
        self.session.progress = {"steps_done": self.step_in_task, "steps": hp.steps,
                                 "tokens_done": self.step_in_task * hp.batch_size * hp.seq_len}
        if self.step_in_task >= hp.steps:
            self._finish_task()
            if self.max_tasks is not None and self.tasks_trained >= self.max_tasks:
                self.done = True
            else:
                self.begin()

    def close(self) -> None:
        """Deliver what was trained, give back a task in progress (its shard goes to another node), save the model
        held; idempotent."""
        if self._deliveries is not None:
            self._deliveries.close()
            self._deliveries = None
        if self._beat is not None:
            self._beat.done.set()
        s = self.session
        for task_id in list(s.held):
            s.give_back(task_id)
        self.task = None
        with contextlib.suppress(OSError):
            s.save_model()
        s.client.close()
        self._hook.remove()
        self.done = True

    def __enter__(self) -> Participant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ tasks
    def _capture_loss(self, module: nn.Module, args: Any, out: Any) -> None:
        if module.training:
            self._last_loss = _loss_of(out)

    def _next_task(self) -> None:
        s = self.session
        while self.task is None:
            try:
                reply = s.lease()
                task = reply.get("task")
                if not task:
                    s.no_task(reply, 0.5 if self._deliveries is not None and self._deliveries.pending else None)
                    continue
                self._start(task)
            except RunDone as end:
                s.status.log(str(end))
                self.done = True
                return
            except Stopped:
                self.done = True
                return

    def _start(self, task: dict[str, Any]) -> None:
        s = self.session
        self._down0 = s.client.bytes_down
        try:
            hp, unknown = task_hparams(task)
            if unknown:
                s.status.log(f"task {task['task_id']}: ignoring unknown hparams {unknown}")
            base = s.ensure_model(int(task["base_version"]))
            tokens = s.fetch_shard(task)
        except (ApiError, ModelFormatError, ValueError, TypeError) as exc:
            s.status.log(f"task {task['task_id']}: cannot start ({exc}); giving the lease back")
            s.give_back(str(task["task_id"]))
            time.sleep(1.0)
            return
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(base[name])
                p.grad = None
        self.model.train()
        self._base, self._tokens, self.hp, self.task = base, tokens, hp, task
        self._gen = torch.Generator().manual_seed(int(task["seed"]))
        if self.user_optimizer is None:
            self.optimizer = make_inner_optimizer(self.model, hp.lr, hp.weight_decay, hp.beta1, hp.beta2,
                                                  fused=torch.device(self.device).type == "cuda")
        else:
            self.user_optimizer.state.clear()  # the inner optimizer starts fresh at every task
        self.step_in_task, self._losses, self._last_loss = 0, [], None
        self._t0 = time.perf_counter()
        self._beat = Heartbeat(s, task)
        self._beat.start()

    def _finish_task(self) -> None:
        s, task, hp = self.session, self.task, self.hp
        train_s = time.perf_counter() - self._t0
        self._beat.done.set()
        self.task = None
        with torch.no_grad():
            delta = {n: self._base[n] - p.detach().to("cpu", torch.float32) for n, p in self.params.items()}
        losses = torch.stack([x.float().cpu() for x in self._losses]) if self._losses else None
        loss_of = (lambda f: float(f(losses))) if losses is not None else (lambda f: math.nan)
        result = TaskResult(delta=delta, tokens=hp.steps * hp.batch_size * hp.seq_len, steps=hp.steps,
                            loss_first=loss_of(lambda t: t[0]), loss_last=loss_of(lambda t: t[-1]),
                            loss_mean=loss_of(torch.mean), time_s=train_s)
        if not all(bool(torch.isfinite(d).all()) for d in delta.values()):
            s.status.log(f"task {task['task_id']}: training diverged (non-finite update); giving the lease back")
            s.give_back(str(task["task_id"]))
            return
        self.tasks_trained += 1
        s.timer.add("train", train_s)
        job = (task, result, s.client.bytes_down - self._down0, None, s.timer.take())
        if self._deliveries is not None:
            self._deliveries.submit(*job)
            self._deliveries.wait(below=s.max_leases)  # leases held = deliveries pending + the next task
        else:
            s.deliver(*job)


class DistributedOptimizer:
    """A torch optimizer that is one TrainNet node: step() = the inner step (the task's AdamW by default, or
    `optimizer`) plus Participant.after_step(). Everything else is Participant's (`opt.participant`)."""

    def __init__(self, coordinator: str, model: nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> None:
        self.participant = Participant(coordinator, model, optimizer, **kwargs)

    @property
    def model(self) -> nn.Module:
        return self.participant.model

    @property
    def done(self) -> bool:
        return self.participant.done

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        self.participant.begin()
        return self.participant.optimizer.param_groups if self.participant.optimizer is not None else []

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.participant.batches()

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.participant.autocast()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        p = self.participant
        if not p.begin():
            return None
        p.before_step()
        out = p.optimizer.step(closure)
        p.after_step()
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.participant.model.zero_grad(set_to_none=set_to_none)

    def close(self) -> None:
        self.participant.close()

    def __enter__(self) -> DistributedOptimizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
