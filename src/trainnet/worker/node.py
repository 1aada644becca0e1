"""The worker loop: register, then lease -> fetch model and shard -> train -> compress -> sign -> upload.

    opts = WorkerOptions(coordinator="http://127.0.0.1:8470", state_dir=Path("state/w0"))
    code = Worker(opts).run()        # 0: run done / stopped / --max-tasks reached; 1: unreachable; 3: refused;
                                     # 5: the URL is not a TrainNet coordinator; 6: a task does not fit in memory

Training is `trainnet.train.run_task`, the function the simulator and the verifier use. Everything that talks
to the coordinator (lease, model versions, shards, error feedback, encode, sign, upload, reveals) is the
NodeSession's (worker/session.py), shared with the drop-in API (trainnet/dropin.py) and multi-GPU nodes
(worker/multi.py). Updates go through `ErrorFeedback` with the run's codec; its residual lives in the state
dir and is committed only when the coordinator accepts the update (a rejected task is redone elsewhere, so
its contribution must not be remembered). Every upload commits to the residual before and after its encode
(`ef_in` / `ef_out` in the header extra, verify/commit.py); while the upload is in flight the saved residual
is the zero one, and an upload whose outcome stays unknown resets the residual to zero (docs/SECURITY.md).
When the coordinator audits a task it says so in the reply (or later in a lease reply's `reveals_due`), and
the worker reveals that task's residuals (worker/reveal.py). SIGINT/SIGTERM stop cleanly: a task in training
pauses and is saved (a restart within its lease resumes it), an update already trained is still delivered,
otherwise the lease is given back with POST /v1/abandon; a second signal aborts.

Overlap: when the run lets a node hold two leases (`consensus.max_leases_per_node >= 2`, shown in /v1/info),
a task's encode + upload run on a background thread while the next task trains, and the published model is
fetched ahead on another; deliveries stay one at a time and in order, so the residual chain is unchanged.
Before its first task the worker checks that the task fits the device's memory (models/memory.py, an
estimate; `memory_gb` overrides the capacity) and refuses it with exit status 6 if not.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainnet.energy import auto_meter
from trainnet.train.local import TaskHParams, TaskResult, run_task
from trainnet.train.partial import Partial, TaskHooks
from trainnet.worker.client import ApiError, NotCoordinator, Stopped, Unreachable
from trainnet.worker.fit import FitCheck
from trainnet.worker.phases import Deliveries, Heartbeat
from trainnet.worker.session import (
    LEASE_FILE,
    TASK_LOG,
    NodeSession,
    Refused,
    RunDone,
    SessionOptions,
    energy_extra,
    resolve_device,
    task_hparams,
)
from trainnet.worker.signals import stop_signals
from trainnet.worker.status import StatusLine
from trainnet.worker.store import ModelFormatError

EXIT_OK, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_NOT_COORDINATOR, EXIT_NO_MEMORY = 0, 1, 3, 5, 6
PREFETCH_AT = 0.8  # share of a task's steps after which the newest model version is fetched ahead
PARTIAL_FILE = "partial.safetensors"  # a task paused by a stop signal, resumed when the worker starts again
__all__ = ["EXIT_NO_MEMORY", "EXIT_NOT_COORDINATOR", "EXIT_OK", "EXIT_REFUSED", "EXIT_UNREACHABLE", "LEASE_FILE",
           "TASK_LOG", "Worker", "WorkerOptions", "energy_extra", "resolve_device"]


@dataclass
class WorkerOptions:
    coordinator: str
    state_dir: Path
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads (0: torch default)
    max_tasks: int | None = None
    join_token: str | None = None
    status_line: bool = False
    retry_budget_s: float = 300.0
    max_wait_s: float = 30.0  # longest sleep between "no task" leases
    delta_chain_max: int = 4  # fp16 model deltas applied in a row before a full download resets drift
    seed: int | None = None  # backoff jitter
    memory_gb: float | None = None  # device memory to plan against (None: measured)
    overlap: bool = True  # upload while the next task trains, when the run allows two leases per node
    prefetch: bool = True  # fetch the newest model version during a task's last steps

    def session(self) -> SessionOptions:
        return SessionOptions(self.coordinator, self.state_dir, self.device, self.join_token, self.retry_budget_s,
                              self.max_wait_s, self.seed)


class _StopNow(BaseException):
    """Raised by the signal handler to leave an interruptible phase (not an Exception on purpose)."""


class Worker(NodeSession):
    def __init__(self, opts: WorkerOptions, status: StatusLine | None = None) -> None:
        super().__init__(opts.session(), status)
        self.opts = opts
        self.fit = FitCheck(self.device, opts.memory_gb)
        self.interruptible = True
        self.training = False  # inside run_task: a stop pauses the task instead of abandoning it
        self.trained = 0  # tasks trained (delivered or being delivered)
        self.delivering: set[str] = set()
        self._deliveries: Deliveries | None = None
        self._prefetch: threading.Thread | None = None
        self._ahead: tuple | None = None  # (task, heartbeat, prepared) leased during the last task's final steps

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        self.stop.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt  # second signal: abort now (a held lease is given back)
        self.stop.set()
        if self.training:  # the task pauses at its next step and is saved: a restart resumes it
            self.status.update(note="pausing the task (Ctrl-C again to give it back instead)")
            self.status.log("stopping: saving the task in progress at its next step so that a restart resumes "
                            "it; press Ctrl-C again to give it back instead")
            return
        self.status.update(note="stopping")
        if self.interruptible:
            raise _StopNow()

    def run(self) -> int:
        """Work until the run is done, --max-tasks is reached, a stop signal, or the coordinator is gone."""
        if self.opts.threads > 0:
            torch.set_num_threads(self.opts.threads)
        with stop_signals(self._on_signal):
            try:
                return self._loop()
            except (_StopNow, Stopped):
                return EXIT_OK
            except RunDone as done:
                self.status.log(str(done))
                return done.code
            except Unreachable as exc:
                self.status.log(f"coordinator unreachable: {exc}")
                return EXIT_UNREACHABLE
            except Refused:
                return EXIT_REFUSED
            except NotCoordinator as exc:  # a wrong URL, not a refusal: say so, and do not retry
                self.status.log(str(exc))
                return EXIT_NOT_COORDINATOR
            finally:
                self.interruptible = False
                ahead = self._take_ahead()  # a task leased ahead is given back below, like any held lease
                if ahead is not None:
                    ahead[1].done.set()
                self._finish_deliveries()
                for task_id in [t for t in self.held if t not in self.delivering]:
                    self.give_back(task_id)
                self.client.close()
                try:
                    with self._model_lock:
                        self.save_model()
                except OSError as exc:
                    self.status.log(f"could not save the model held ({exc})")

    def _finish_deliveries(self) -> None:
        if self._deliveries is not None:
            self._deliveries.close()  # an update already trained is delivered before the node stops
            self._deliveries = None

    def _give_back_leftover(self) -> None:
        """A previous process of this node was killed holding leases: resume a paused task if it left one,
        give the others back so their shards are requeued now instead of when the leases expire."""
        resumed = self._resume_leftover()
        for task_id in self.leftover_leases():
            if task_id != resumed:
                self.give_back(task_id)

    def _loop(self) -> int:
        self.connect()
        self._give_back_leftover()
        overlap = self.opts.overlap and self.max_leases >= 2
        if overlap:
            self._deliveries = Deliveries(self)
            self._deliveries.start()
        while not self.stop.is_set():
            if self.opts.max_tasks is not None and self.trained >= self.opts.max_tasks:
                self._finish_deliveries()
                self.status.log(f"done: {self.tasks_done} task(s) (--max-tasks)")
                return EXIT_OK
            ahead = self._take_ahead()
            if ahead is not None:  # leased and prepared during the last task's final steps
                code = self._do_task(ahead[0], ahead=ahead)
                if code is not None:
                    return code
                continue
            if self._deliveries is not None:  # the lease limit counts leases still being delivered
                self._deliveries.wait(below=self.max_leases)
            self.status.update(phase="leasing", task=None)
            reply = self.lease()
            task = reply.get("task")
            if not task:
                self.no_task(reply, None if not self.delivering else 0.5)
                continue
            code = self._do_task(task)
            if code is not None:
                return code
        return EXIT_OK

    def deliver(self, task: dict[str, Any], result: Any, down: int = 0, reading: Any = None,
                times: dict[str, float] | None = None) -> bool:
        try:
            return super().deliver(task, result, down, reading, times)
        finally:
            self.delivering.discard(str(task["task_id"]))

    # ------------------------------------------------------------------ one task
    def _prepare(self, task: dict[str, Any], phase: str = "download"
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, TaskHParams] | None:
        task_id = str(task["task_id"])
        try:
            hp, unknown = task_hparams(task)
            if unknown:
                self.status.log(f"task {task_id}: ignoring unknown hparams {unknown}")
            # not self.params afterwards: a prefetch may move it on
            base = self.ensure_model(int(task["base_version"]), phase=phase)
            return base, self.fetch_shard(task, phase="prefetch" if phase == "prefetch" else "shard"), hp
        except (ApiError, ModelFormatError, ValueError, TypeError) as exc:
            self.status.log(f"task {task_id}: cannot start ({exc}); giving the lease back")
            self.give_back(task_id)
            if self.stop.wait(1.0):
                raise Stopped("stop") from None
            return None

    def _do_task(self, task: dict[str, Any], resume: Partial | None = None, ahead: tuple | None = None
                 ) -> int | None:
        task_id, base = str(task["task_id"]), int(task["base_version"])
        refusal = self.fit.refusal(self.model_cfg, task, self.model) if resume is None else None
        if refusal is not None:
            self.status.log(refusal)
            if ahead is not None:
                ahead[1].done.set()
            self.give_back(task_id)
            return EXIT_NO_MEMORY
        down0 = self.client.bytes_down
        self.status.update(phase="download", task=task_id, version=base, note=None)
        if ahead is not None:
            _, beat, prepared = ahead
        else:
            prepared = self._prepare(task)
            beat = Heartbeat(self, task)
            if prepared is not None:
                beat.start()
        if prepared is None:
            return None
        base_params, tokens, hp = prepared
        try:
            self.status.update(phase="training")
            meter = auto_meter(self.device)
            meter.start()
            hooks = self._hooks(task, hp, resume)
            self.training = True
            try:
                result = self._train(task, base_params, tokens, hp, hooks)
            finally:
                self.training = False
                reading = meter.stop()
            if result is None:  # stopped where a task cannot be paused (a multi-rank node)
                self.give_back(task_id)
                raise Stopped("stopped")
            if isinstance(result, Partial):
                self._pause(task, result)
                raise Stopped("paused")
            self.timer.add("train", result.time_s)
            self.status.update(tok_s=result.tokens / max(result.time_s, 1e-9))
            if not all(bool(torch.isfinite(d).all()) for d in result.delta.values()):
                self.status.log(f"task {task_id}: training diverged (non-finite update); giving the lease back")
                self.give_back(task_id)
                return None
            self.interruptible = False  # from here the update is delivered even if a stop comes
            self.trained += 1
            self.delivering.add(task_id)
            job = (task, result, self.client.bytes_down - down0, reading, self.timer.take())
            if self._deliveries is not None and not self.stop.is_set():
                self._deliveries.submit(*job)
            else:
                self.deliver(*job)
        finally:
            beat.done.set()
            self.interruptible = True
        if self.stop.is_set():
            raise Stopped("stop after upload")
        return None

    def _train(self, task: dict[str, Any], base: dict[str, torch.Tensor], tokens: torch.Tensor, hp: TaskHParams,
               hooks: TaskHooks) -> TaskResult | Partial | None:
        """One task's training (worker/multi.py overrides it to train over several ranks)."""
        return run_task(self.model, base, tokens, hp, seed=int(task["seed"]), device=self.device, hooks=hooks)

    def _prefetch_next(self) -> None:
        """Late in a task (PREFETCH_AT of its steps), on a thread: when the run allows one more lease than this
        node holds, lease the next task now and fetch its base model and shard (its heartbeat starts at once), so
        it starts the moment this one ends; otherwise fetch the newest published version, which the next lease
        will most likely name as its base. Either way the downloads leave the critical path; the lease's base is
        the version it would have been at the end of this task (this task's update is not delivered yet)."""
        if self._prefetch is not None and self._prefetch.is_alive():
            return
        one_more = (self._deliveries is not None and not self.stop.is_set() and self._deliveries.pending == 0
                    and len(self.held) < self.max_leases
                    and (self.opts.max_tasks is None or self.trained + 1 < self.opts.max_tasks))

        def fetch() -> None:
            try:
                if one_more:
                    reply = self.lease(phase="prefetch")
                    task = reply.get("task")
                    if task:
                        beat = Heartbeat(self, task)
                        beat.start()
                        prepared = self._prepare(task, phase="prefetch")
                        if prepared is None:
                            beat.done.set()
                        else:
                            self._ahead = (task, beat, prepared)
                        return
                with self._model_lock:  # the fetcher's manifest cache is shared with the training thread
                    latest = self.fetcher.latest()
                if latest > (self.version if self.version is not None else -1):
                    self.ensure_model(latest, phase="prefetch")
            except Exception as exc:  # noqa: BLE001 - a prefetch is an optimisation only; RunDone included
                self.status.log(f"prefetch failed ({type(exc).__name__}: {exc}); the next lease is made as usual")

        self._prefetch = threading.Thread(target=fetch, daemon=True, name="prefetch")
        self._prefetch.start()

    def _take_ahead(self) -> tuple | None:
        """The task leased ahead (task, its heartbeat, (base, tokens, hparams)), if any."""
        if self._prefetch is not None:
            self._prefetch.join()
        ahead, self._ahead = self._ahead, None
        return ahead

    # ------------------------------------------------------------------ progress, pause and resume
    def _hooks(self, task: dict[str, Any], hp: TaskHParams, resume: Partial | None) -> TaskHooks:
        steps, per_step = hp.steps, hp.batch_size * hp.seq_len
        t0 = time.monotonic() - (resume.elapsed_s if resume is not None else 0.0)
        first = resume.step if resume is not None else 0

        prefetch_at = max(1, int(steps * PREFETCH_AT)) if self.opts.prefetch else -1

        shown = [0.0]

        def on_step(done: int, loss: torch.Tensor) -> None:
            if done == prefetch_at:
                self._prefetch_next()
            now = time.monotonic()
            if done < steps and now - shown[0] < 1.0:
                return  # at most once a second: reading the loss waits for the GPU
            shown[0] = now
            rate = (done - first) / max(now - t0 - (resume.elapsed_s if resume else 0.0), 1e-6)
            self.progress = {"steps_done": done, "steps": steps, "tokens_done": done * per_step,
                             "eta_s": round((steps - done) / max(rate, 1e-9), 1), "loss": round(float(loss), 4)}
            self.status.update(note=f"{100 * done / steps:.0f}% of {task['task_id']}")

        self.progress = {}
        return TaskHooks(on_step=on_step, should_pause=self.stop.is_set, resume=resume, task_id=task["task_id"])

    def _pause(self, task: dict[str, Any], part: Partial) -> None:
        """Save a paused task and keep its lease: a restart before the lease expires resumes it."""
        part.meta = {"run_id": self.run_id, "task": task, "version": self.version}
        path = self.opts.state_dir / PARTIAL_FILE
        part.save(path)
        self.keep(task)  # kept in lease.json, not given back on exit
        hp = task["hparams"]
        done = part.step * hp["batch_size"] * hp["seq_len"]
        left = max(0.0, float(task["deadline"]) - time.time())
        self.status.log(f"stopped: task {task['task_id']} paused at {100 * part.step / hp['steps']:.0f}% "
                        f"({done:,}/{int(task['tokens']):,} tokens) and saved to {path}; start the worker again "
                        f"within {left:.0f}s (its lease) to resume it, or it goes to another node")

    def _resume_leftover(self) -> str | None:
        """A task this node paused (or was killed during) is resumed if its lease is still ours: its task id."""
        path = self.opts.state_dir / PARTIAL_FILE
        if not path.exists():
            return None
        try:
            part = Partial.load(path)
        except Exception as exc:  # a torn or foreign file: start fresh
            self.status.log(f"cannot read {path} ({exc}); starting fresh")
            path.unlink(missing_ok=True)
            return None
        task = part.meta.get("task") or {}
        if part.meta.get("run_id") != self.run_id or not isinstance(task.get("task_id"), str):
            path.unlink(missing_ok=True)
            return None
        try:
            reply = self.client.heartbeat(task["task_id"], budget_s=10.0)
        except (ApiError, Unreachable) as exc:
            self.status.log(f"task {task['task_id']} cannot be resumed ({exc}): its lease went to another node")
            path.unlink(missing_ok=True)
            return None
        task = dict(task, deadline=float(reply.get("deadline", task.get("deadline", 0.0))))
        self.status.log(f"resuming task {task['task_id']} at step {part.step}/{task['hparams']['steps']}")
        self.hold(task)
        path.unlink(missing_ok=True)
        self._do_task(task, resume=part)
        return str(task["task_id"])
