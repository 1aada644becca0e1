"""The worker loop: register, then lease -> fetch model and shard -> train -> compress -> sign -> upload.

    opts = WorkerOptions(coordinator="http://127.0.0.1:8470", state_dir=Path("state/w0"))
    code = Worker(opts).run()        # 0: run done / stopped / --max-tasks reached; 1: unreachable; 3: refused;
                                     # 5: the URL is not a TrainNet coordinator

Training is `trainnet.train.run_task`, the function the simulator and the verifier use. Updates go
through `ErrorFeedback` with the run's codec; its residual lives in the state dir and is committed
only when the coordinator accepts the update (a rejected task is redone elsewhere, so its
contribution must not be remembered). Every upload commits to the residual before and after its
encode (`ef_in` / `ef_out` in the header extra, verify/commit.py); while the upload is in flight the
saved residual is the zero one, and an upload whose outcome stays unknown resets the residual to zero
(the coordinator's chain always accepts a reset; docs/SECURITY.md). When the coordinator audits a task
it says so in the reply (or later in a lease reply's `reveals_due`), and the worker reveals that
task's residuals, which it saves before each upload (worker/reveal.py) so a restart can still reveal. SIGINT/SIGTERM stop cleanly: an update already encoded is
still delivered, otherwise the lease is given back with POST /v1/abandon; a second signal aborts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainnet.codec import ErrorFeedback
from trainnet.data.token_corpus import tokens_from_bytes
from trainnet.energy import EnergyReading, auto_meter
from trainnet.models import ModelConfig, build_model
from trainnet.protocol import auth
from trainnet.protocol.wire import encode_update, header_sha256
from trainnet.server.api import solve_pow
from trainnet.train.local import TaskHParams, params_of, run_task
from trainnet.train.partial import Partial, TaskHooks
from trainnet.verify.commit import EMPTY_DIGEST, encode_committed
from trainnet.worker.client import (
    ApiError,
    CoordinatorClient,
    NotCoordinator,
    RetryPolicy,
    Stopped,
    Unreachable,
)
from trainnet.worker.reveal import RevealStore, reveal_body
from trainnet.worker.signals import stop_signals
from trainnet.worker.status import StatusLine, human_bytes
from trainnet.worker.store import ModelFormatError, WorkerStore
from trainnet.worker.versions import VersionFetcher

EXIT_OK, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_NOT_COORDINATOR = 0, 1, 3, 5
TASK_LOG = "tasks.jsonl"
LEASE_FILE = "lease.json"
PARTIAL_FILE = "partial.safetensors"  # a task paused by a stop signal, resumed when the worker starts again
PROGRESS_EVERY_S = 60.0  # the lease held right now, so a restarted worker can give it back
REVEAL_KEEP = 4  # residuals of this many recent uploads are kept (in memory) for a reveal
_HPARAM_FIELDS = {f.name for f in dataclasses.fields(TaskHParams)}


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


class _Refused(Exception):
    """The coordinator refused this node (banned, not allowed, bad join token)."""


class _StopNow(BaseException):
    """Raised by the signal handler to leave an interruptible phase (not an Exception on purpose)."""


class _Heartbeat(threading.Thread):
    """Keeps a lease alive and reports the task's progress: heartbeats when half of the remaining lease has
    passed, and at least every PROGRESS_EVERY_S seconds (the coordinator's log and dashboard show it)."""

    def __init__(self, worker: Worker, task: dict[str, Any]) -> None:
        super().__init__(daemon=True, name="heartbeat")
        self.worker, self.task_id = worker, task["task_id"]
        self.offset = float(task["issued_at"]) - time.time()  # server clock - local clock
        self.deadline = float(task["deadline"])
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            left = self.deadline - (time.time() + self.offset)
            if self.done.wait(max(0.5, min(left / 2, PROGRESS_EVERY_S))):
                return
            try:
                reply = self.worker.client.heartbeat(self.task_id, budget_s=max(2.0, left / 3),
                                                     progress=self.worker.progress or None)
                self.deadline = float(reply.get("deadline", self.deadline))
            except (ApiError, Unreachable, Stopped, ValueError) as exc:
                self.worker.status.log(f"heartbeat {self.task_id}: {exc}")
                if isinstance(exc, ApiError | Stopped):
                    return  # lease gone or stopping: nothing left to keep alive


def energy_extra(reading: EnergyReading | None) -> dict[str, Any]:
    """The task's energy for the update header's `extra` (docs/OBSERVABILITY.md); {} if there is no
    usable reading (a sensor glitch must not cost the update: the server refuses malformed fields)."""
    if reading is None or not (math.isfinite(reading.joules) and math.isfinite(reading.seconds)) \
            or reading.joules < 0 or reading.seconds < 0:
        return {}
    source = "".join(c for c in reading.source if c.isprintable())[:200] or "unknown"
    if not reading.measured and not source.startswith("estimate"):
        source = ("estimate: " + source)[:200]
    return {"energy_j": float(reading.joules), "energy_measured": bool(reading.measured), "energy_source": source,
            "task_s": float(reading.seconds)}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    return device


class Worker:
    def __init__(self, opts: WorkerOptions, status: StatusLine | None = None) -> None:
        self.opts = opts
        self.store = WorkerStore(opts.state_dir)
        self.key = auth.load_or_create_key(opts.state_dir)
        self.stop = threading.Event()
        self.client = CoordinatorClient(opts.coordinator, self.key, retry=RetryPolicy(budget_s=opts.retry_budget_s),
                                        seed=opts.seed, stop=self.stop, on_retry=self._on_retry)
        self.node_id = self.client.node_id
        self.status = status or StatusLine(enabled=False)
        self.device = resolve_device(opts.device)
        self.run_id = ""
        self.codec = "fp32"
        self.model: torch.nn.Module | None = None
        self.model_cfg: ModelConfig | None = None
        self.data_info: dict[str, Any] = {}
        self.template: dict[str, torch.Tensor] = {}
        self.version: int | None = None
        self.params: dict[str, torch.Tensor] | None = None
        self.chain = 0
        self.ef: ErrorFeedback | None = None
        self.task: dict[str, Any] | None = None  # the lease held right now
        self.interruptible = True
        self.training = False  # inside run_task: a stop pauses the task instead of abandoning it
        self.progress: dict[str, Any] = {}  # the running task's progress, sent with heartbeats
        self.tasks_done = 0
        self.model_down = 0  # bytes of model versions downloaded for the current task
        self.results: dict[str, int] = {}
        # task_id -> (r_in, r_out) of uploads that may have to be revealed (audited or outcome unknown)
        self.revealable: dict[str, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
        self._cannot_reveal: set[str] = set()

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

    def _on_retry(self, msg: str) -> None:
        self.status.update(note=msg)
        self.status.log(msg)

    def run(self) -> int:
        """Work until the run is done, --max-tasks is reached, a stop signal, or the coordinator is gone."""
        if self.opts.threads > 0:
            torch.set_num_threads(self.opts.threads)
        with stop_signals(self._on_signal):
            try:
                return self._loop()
            except (_StopNow, Stopped):
                return EXIT_OK
            except Unreachable as exc:
                self.status.log(f"coordinator unreachable: {exc}")
                return EXIT_UNREACHABLE
            except _Refused:
                return EXIT_REFUSED
            except NotCoordinator as exc:  # a wrong URL, not a refusal: say so, and do not retry
                self.status.log(str(exc))
                return EXIT_NOT_COORDINATOR
            finally:
                self.interruptible = False
                self._give_back()
                self.client.close()

    @property
    def reveals(self) -> RevealStore:
        """Residual pairs kept on disk for audits of this run (derived from the run id; stateless)."""
        return RevealStore(self.store.feedback_dir(self.run_id) / "reveal", REVEAL_KEEP)

    def _hold(self, task: dict[str, Any] | None, keep: bool = False) -> None:
        self.task = task
        path = self.opts.state_dir / LEASE_FILE
        if task is None and not keep:
            path.unlink(missing_ok=True)
        else:
            path.write_text(json.dumps({"run_id": self.run_id, "task_id": task["task_id"],
                                        "shard_id": task.get("shard_id"), "seed": task.get("seed")}))

    def _give_back_leftover(self) -> None:
        """A previous process of this node was killed holding a lease: resume it when it left a paused task,
        else give it back so the shard is requeued now instead of when the lease expires."""
        if self._resume_leftover():
            return
        try:
            old = json.loads((self.opts.state_dir / LEASE_FILE).read_text())
        except (OSError, ValueError):
            return
        if isinstance(old, dict) and old.get("run_id") == self.run_id and isinstance(old.get("task_id"), str):
            self.task = {"task_id": old["task_id"]}
            self._give_back()
        self._hold(None)

    def _give_back(self) -> None:
        if self.task is None:
            return
        task_id = self.task["task_id"]
        self._hold(None)
        try:
            self.client.abandon(task_id)
            self.status.log(f"abandoned lease {task_id}")
        except (ApiError, Unreachable, Stopped) as exc:
            self.status.log(f"could not abandon {task_id} ({exc}); its lease will expire")

    # ------------------------------------------------------------------ protocol steps
    def _connect(self) -> None:
        info = self.client.info()
        cfg = ModelConfig.from_dict(info["model"])
        self.data_info = dict(info.get("data") or {})
        run_id, codec = str(info["run_id"]), str(info.get("codec") or "fp32")
        if run_id != self.run_id or cfg != self.model_cfg or codec != self.codec:
            self.run_id, self.codec, self.model_cfg = run_id, codec, cfg
            torch.manual_seed(0)  # the init is overwritten by the downloaded model anyway
            self.model = build_model(cfg)
            self.template = params_of(self.model)
            self.version, self.params, self.chain = None, None, 0
            held = self.store.load_model(run_id, self.template)
            if held is not None:
                self.version, self.params, self.chain = held
            self.ef = ErrorFeedback.load(self.store.feedback_dir(run_id), codec)
        self.signer = info.get("signer")
        bits = int((info.get("limits") or {}).get("register_pow_bits") or 0)
        nonce = solve_pow(run_id, auth.public_key_hex(self.key), bits) if bits > 0 else None
        reply = self.client.register(self.opts.join_token, info={"device": self.device,
                                                                  "threads": torch.get_num_threads()},
                                     pow_nonce=nonce)
        self.status.log(f"registered {self.node_id} in run {self.run_id} (codec {self.codec}, device {self.device}, "
                        f"model {sum(t.numel() for t in self.template.values()):,} params)")
        if reply.get("run_id") not in (None, self.run_id):
            self.run_id = str(reply["run_id"])

    def _loop(self) -> int:
        self._reconnect()
        self._give_back_leftover()
        while not self.stop.is_set():
            if self.opts.max_tasks is not None and self.tasks_done >= self.opts.max_tasks:
                self.status.log(f"done: {self.tasks_done} task(s) (--max-tasks)")
                return EXIT_OK
            self.status.update(phase="leasing", task=None)
            try:
                reply = self.client.lease()
            except ApiError as exc:
                if exc.code in ("unknown_node", "not_found") or exc.status == 404:
                    self.status.log("coordinator does not know this node (restarted?): registering again")
                    self._reconnect()
                    continue
                if exc.code in ("banned", "not_allowed", "run_done") or exc.status == 403:
                    self.status.log(f"lease refused: {exc}")
                    return EXIT_OK if exc.code == "run_done" else EXIT_REFUSED
                raise
            for task_id in reply.get("reveals_due") or []:
                self._reveal(str(task_id))
            task = reply.get("task")
            if not task:
                code = self._no_task(reply)
                if code is not None:
                    return code
                continue
            task = dict(task, _upload=reply.get("upload"))
            self._hold(task)
            self._do_task(task)
        return EXIT_OK

    def _reconnect(self) -> None:
        try:
            self._connect()
        except ApiError as exc:
            self.status.log(f"registration refused: {exc}")
            raise _Refused(str(exc)) from exc

    def _no_task(self, reply: dict[str, Any]) -> int | None:
        reason, after = str(reply.get("reason", "")), reply.get("retry_after_s")
        if reason in ("done", "run_done"):
            self.status.log(f"run is done; {self.tasks_done} task(s) from this worker ({self._summary()})")
            return EXIT_OK
        if reason == "banned":
            self.status.log("this node is banned; stopping")
            return EXIT_REFUSED
        if reason == "unknown_node":
            self._reconnect()
            return None
        if after is None:
            self.status.log(f"no task ({reason}) and no retry time: stopping")
            return EXIT_OK
        wait = min(max(float(after), 0.1), self.opts.max_wait_s) if math.isfinite(float(after)) else self.opts.max_wait_s
        self.status.update(phase="waiting", note=f"no task: {reason}")
        if self.stop.wait(wait):
            raise Stopped("stop")
        return None

    def _record(self, row: dict[str, Any]) -> None:
        # One JSON line per task, measured here (the demo's summary and loss curve read these).
        with open(self.opts.state_dir / TASK_LOG, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.results.items())) or "no uploads"

    def _ensure_model(self, base: int) -> None:
        """Hold version `base` of the published model: apply the published deltas since the version held
        (q4 of the difference, a few bits per parameter per version), or load the last full checkpoint when
        that is cheaper; every manifest's signature and every blob's sha256 are checked (worker/versions.py)."""
        if self.version == base and self.params is not None:
            return
        have = (self.version, self.params) if self.params is not None and self.version is not None else None
        self.params = VersionFetcher(self.client, self.template, self.signer).get(base, have)
        self.version = base
        self.store.save_model(self.params, base, self.run_id, self.model_cfg)

    def _fetch_shard(self, shard_id: int, sha256: str) -> torch.Tensor:
        data = self.store.cached_shard(sha256)
        if data is None:
            data = self.client.shard(shard_id)
            got = hashlib.sha256(data).hexdigest()
            if got != sha256:
                raise ModelFormatError(f"shard {shard_id}: sha256 {got[:12]} != task's {sha256[:12]}")
            self.store.save_shard(sha256, data)
        return tokens_from_bytes(data, str(self.data_info.get("dtype", "uint8")), self.data_info.get("vocab_size"))

    def _do_task(self, task: dict[str, Any], resume: Partial | None = None) -> None:
        task_id, base = str(task["task_id"]), int(task["base_version"])
        down0 = self.client.bytes_down
        self.status.update(phase="download", task=task_id, version=base, note=None)
        try:
            self._ensure_model(base)
            self.model_down = self.client.bytes_down - down0  # the model's share of this task's downloads
            tokens = self._fetch_shard(int(task["shard_id"]), str(task["shard_sha256"]))
            unknown = set(task["hparams"]) - _HPARAM_FIELDS
            hp = TaskHParams(**{k: v for k, v in task["hparams"].items() if k in _HPARAM_FIELDS})
            if unknown:
                self.status.log(f"task {task_id}: ignoring unknown hparams {sorted(unknown)}")
        except (ApiError, ModelFormatError, ValueError, TypeError) as exc:
            self.status.log(f"task {task_id}: cannot start ({exc}); giving the lease back")
            self._give_back()
            if self.stop.wait(1.0):
                raise Stopped("stop") from None
            return
        beat = _Heartbeat(self, task)
        beat.start()
        try:
            self.status.update(phase="training")
            meter = auto_meter(self.device)
            meter.start()
            hooks = self._hooks(task, hp, resume)
            self.training = True
            try:
                result = run_task(self.model, self.params, tokens, hp, seed=int(task["seed"]), device=self.device,
                                  hooks=hooks)
            finally:
                self.training = False
                reading = meter.stop()
            if isinstance(result, Partial):
                self._pause(task, result)
                raise Stopped("paused")
            tok_s = result.tokens / max(result.time_s, 1e-9)
            self.status.update(tok_s=tok_s)
            if not all(bool(torch.isfinite(d).all()) for d in result.delta.values()):
                self.status.log(f"task {task_id}: training diverged (non-finite update); giving the lease back")
                self._give_back()
                return
            self.interruptible = False  # from here the update is delivered even if a stop comes
            self._upload(task, result, tok_s, self.client.bytes_down - down0, reading)
        finally:
            beat.done.set()
            self.interruptible = True
        if self.stop.is_set():
            raise Stopped("stop after upload")

    # ------------------------------------------------------------------ progress, pause and resume
    def _hooks(self, task: dict[str, Any], hp: TaskHParams, resume: Partial | None) -> TaskHooks:
        steps, per_step = hp.steps, hp.batch_size * hp.seq_len
        t0 = time.monotonic() - (resume.elapsed_s if resume is not None else 0.0)
        first = resume.step if resume is not None else 0

        shown = [0.0]

        def on_step(done: int, loss: torch.Tensor) -> None:
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
        self._hold(task, keep=True)
        self.task = None  # not given back on exit
        hp = task["hparams"]
        done = part.step * hp["batch_size"] * hp["seq_len"]
        left = max(0.0, float(task["deadline"]) - time.time())
        self.status.log(f"stopped: task {task['task_id']} paused at {100 * part.step / hp['steps']:.0f}% "
                        f"({done:,}/{int(task['tokens']):,} tokens) and saved to {path}; start the worker again "
                        f"within {left:.0f}s (its lease) to resume it, or it goes to another node")

    def _resume_leftover(self) -> bool:
        """A task this node paused (or was killed during) is resumed if its lease is still ours. True if so."""
        path = self.opts.state_dir / PARTIAL_FILE
        if not path.exists():
            return False
        try:
            part = Partial.load(path)
        except Exception as exc:  # a torn or foreign file: start fresh
            self.status.log(f"cannot read {path} ({exc}); starting fresh")
            path.unlink(missing_ok=True)
            return False
        task = part.meta.get("task") or {}
        if part.meta.get("run_id") != self.run_id or not isinstance(task.get("task_id"), str):
            path.unlink(missing_ok=True)
            return False
        try:
            reply = self.client.heartbeat(task["task_id"], budget_s=10.0)
        except (ApiError, Unreachable) as exc:
            self.status.log(f"task {task['task_id']} cannot be resumed ({exc}): its lease went to another node")
            path.unlink(missing_ok=True)
            self._hold(None)
            return False
        task = dict(task, deadline=float(reply.get("deadline", task.get("deadline", 0.0))))
        self.status.log(f"resuming task {task['task_id']} at step {part.step}/{task['hparams']['steps']}")
        self._hold(task)
        path.unlink(missing_ok=True)
        self._do_task(task, resume=part)
        return True

    def _upload(self, task: dict[str, Any], result: Any, tok_s: float, down: int,
                reading: EnergyReading | None = None) -> None:
        task_id, base = str(task["task_id"]), int(task["base_version"])
        self.status.update(phase="encoding")
        codec = str(task.get("codec") or self.codec)
        # The update and the residual commitments (the digest of a zero or absent residual is EMPTY_DIGEST).
        encoded, old, new, commit = encode_committed(self.ef, result.delta, codec)
        revealable = commit["ef_in"] != EMPTY_DIGEST or commit["ef_out"] != EMPTY_DIGEST
        loss = result.loss_mean if math.isfinite(result.loss_mean) else result.loss_last
        energy = energy_extra(reading)
        extra = {"tokens": result.tokens, "steps": result.steps, "loss": float(loss), **energy, **commit}
        body = encode_update(encoded, codec, run_id=self.run_id, node_id=self.node_id, task_id=task_id,
                             base_version=base, extra=extra)
        raw = sum(4 * t.numel() for t in result.delta.values())
        sha, hsha = hashlib.sha256(body).hexdigest(), header_sha256(body)
        sig = auth.sign_update(self.key, self.run_id, self.node_id, task_id, base, sha, hsha)
        meta = {"base_version": base, "sha256": sha, "header_sha256": hsha, "nbytes": len(body), "codec": codec,
                **extra}
        self.status.update(phase="uploading", raw=raw, sent=len(body))
        # Until the outcome is known the saved residual is the zero one: a worker killed mid-upload
        # restarts from a reset, which continues the coordinator's chain whatever became of the upload.
        ErrorFeedback(self.ef.codec).save(self.store.feedback_dir(self.run_id))
        if revealable:
            self.reveals.put(task_id, old, new)  # on disk before the upload: a restart can still reveal
        accepted, outcome, audit, unknown = False, "", {}, False
        try:
            reply = self.client.upload(task, task.get("_upload") or {}, body, sig, meta)
            accepted = bool(reply.get("accepted"))
            reason = str(reply.get("reason", ""))
            audit = reply.get("audit") or {}
            outcome = (f"accepted v{reply.get('version')} tau={reply.get('staleness')}" if accepted
                       else f"rejected {reason}")
        except ApiError as exc:
            accepted = exc.code == "replay"  # an earlier attempt whose reply was lost got through
            audit = (exc.body.get("audit") or {}) if accepted else {}
            outcome = "accepted (replay of a delivered upload)" if accepted else f"rejected {exc.code}"
            if exc.code == "unknown_node":
                self._reconnect()
        except Unreachable as exc:
            outcome, unknown = f"unknown (upload failed: {exc})", True
        self._hold(None)
        if accepted:
            self.ef.save(self.store.feedback_dir(self.run_id))
        elif unknown:  # the coordinator may or may not hold ef_out: start again from a zero residual
            self.ef.reset()
        else:
            self.ef.residuals = old  # this task will be redone elsewhere; forget its contribution
            self.ef.save(self.store.feedback_dir(self.run_id))
        if revealable and (unknown or (accepted and audit.get("reveal"))):
            self.revealable[task_id] = (old, new)
            while len(self.revealable) > REVEAL_KEEP:
                del self.revealable[next(iter(self.revealable))]
        else:
            self.reveals.forget(task_id)
        if accepted and audit.get("reveal"):
            outcome += ", audited: " + ("residuals revealed" if self._reveal(task_id) else "reveal pending")
        key = outcome.split(" ")[0] if accepted else outcome.split(" (")[0]
        self.results[key] = self.results.get(key, 0) + 1
        self.tasks_done += 1
        self.status.update(phase="done", last=outcome)
        self._record({"time": time.time(), "task_id": task_id, "shard_id": task["shard_id"], "base_version": base,
                      "steps": result.steps, "tokens": result.tokens, "loss_first": result.loss_first,
                      "loss_last": result.loss_last, "loss_mean": result.loss_mean, "train_s": result.time_s,
                      "tok_s": tok_s, "bytes_down": down, "bytes_down_model": self.model_down, "bytes_up": len(body),
                      "bytes_raw": raw,
                      "accepted": accepted, "outcome": outcome, "audit_reveal": bool(audit.get("reveal")),
                      **energy})
        self.status.log(
            f"task {task_id} shard {task['shard_id']} base v{base} steps {result.steps} "
            f"loss {result.loss_first:.3f}->{result.loss_last:.3f} {tok_s:,.0f} tok/s {result.time_s:.1f}s | "
            f"down {human_bytes(down)} up {human_bytes(len(body))} (fp32 {human_bytes(raw)}, "
            f"{raw / max(len(body), 1):.1f}x) | {outcome}")

    def _reveal(self, task_id: str) -> bool:
        """POST the residuals of an audited task (kept in memory, or on disk from before a restart);
        True when delivered."""
        kept = self.revealable.get(task_id)
        body = reveal_body(*kept) if kept is not None else self.reveals.body(task_id)
        if body is None:
            if task_id not in self._cannot_reveal:  # said once, not at every lease
                self._cannot_reveal.add(task_id)
                self.status.log(f"audit of {task_id}: its residuals are not kept here (restarted?); cannot reveal")
            return False
        try:
            self.client.reveal(task_id, body)
        except ApiError as exc:
            if exc.code in ("already_revealed", "unknown_audit", "reveal_not_needed"):
                self.revealable.pop(task_id, None)  # nothing left to do for this task
                self.reveals.forget(task_id)
            self.status.log(f"audit of {task_id}: reveal refused ({exc})")
            return exc.code == "already_revealed"
        except Unreachable as exc:
            self.status.log(f"audit of {task_id}: reveal failed ({exc}); retried when a lease reply asks")
            return False
        self.revealable.pop(task_id, None)
        self.reveals.forget(task_id)
        self.status.log(f"audit of {task_id}: residuals revealed")
        return True

