"""One participant's side of the protocol, shared by the CLI worker (worker/node.py), the drop-in API
(trainnet/dropin.py) and a multi-GPU node's rank 0 (worker/multi.py): register, lease, hold the published
model, fetch shards, then deliver a trained task (error feedback -> encode -> sign -> upload -> reveals).

    s = NodeSession(SessionOptions("http://127.0.0.1:8470", Path("state/w0")))
    s.connect()                                   # GET /v1/info, build the run's model, register
    reply = s.lease()                             # {"task": {...}} or a no-task reply (s.no_task(reply))
    s.ensure_model(task["base_version"]); tokens = s.fetch_shard(task)
    s.deliver(task, result)                       # result: a train.local.TaskResult (delta = base - local)

Who trains is the caller's business; everything that talks to the coordinator, signs, or keeps the error
feedback residual lives here, once. Times spent per phase are measured (`s.timer`) and written with each
task's line in tasks.jsonl (train / encode / upload / download / lease / wait seconds).
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
from trainnet.codec.feedback import STATE_FILE as EF_FILE
from trainnet.data.token_corpus import tokens_from_bytes
from trainnet.energy import EnergyReading
from trainnet.models import ModelConfig, build_model
from trainnet.protocol import auth
from trainnet.protocol.wire import encode_update, header_sha256
from trainnet.train.local import TaskHParams, params_of
from trainnet.verify.commit import EMPTY_DIGEST, encode_committed
from trainnet.worker.client import ApiError, CoordinatorClient, RetryPolicy, Stopped, Unreachable
from trainnet.worker.phases import PhaseTimer
from trainnet.worker.reveal import RevealStore, reveal_body
from trainnet.worker.status import StatusLine, human_bytes
from trainnet.worker.store import ModelFormatError, WorkerStore
from trainnet.worker.versions import VersionFetcher

TASK_LOG = "tasks.jsonl"
LEASE_FILE = "lease.json"
REVEAL_KEEP = 4  # residuals of this many recent uploads are kept (in memory) for a reveal
HPARAM_FIELDS = {f.name for f in dataclasses.fields(TaskHParams)}
SAVE_MODEL_EVERY_S = 30.0  # the model held is written to the state dir at most this often (and at exit)
PHASES = ("lease", "download", "shard", "wait", "train", "prefetch")  # prefetch: on its own thread  # measured on the training thread; encode/upload per delivery


class Refused(Exception):
    """The coordinator refused this node (banned, not allowed, bad join token)."""


class RunDone(Exception):
    """The run is done (or this node may lease no more): `code` is the exit status to end with."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass
class SessionOptions:
    coordinator: str
    state_dir: Path
    device: str = "auto"
    join_token: str | None = None
    retry_budget_s: float = 300.0
    max_wait_s: float = 30.0  # longest sleep between "no task" leases
    seed: int | None = None  # backoff jitter


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


def task_hparams(task: dict[str, Any]) -> tuple[TaskHParams, list[str]]:
    """The task's hyperparameters, and the names of any this worker does not know (ignored)."""
    unknown = sorted(set(task["hparams"]) - HPARAM_FIELDS)
    return TaskHParams(**{k: v for k, v in task["hparams"].items() if k in HPARAM_FIELDS}), unknown


class NodeSession:
    def __init__(self, opts: SessionOptions, status: StatusLine | None = None,
                 stop: threading.Event | None = None) -> None:
        self.sopts = opts
        self.store = WorkerStore(opts.state_dir)
        self.key = auth.load_or_create_key(opts.state_dir)
        self.stop = stop or threading.Event()
        self.client = CoordinatorClient(opts.coordinator, self.key, retry=RetryPolicy(budget_s=opts.retry_budget_s),
                                        seed=opts.seed, stop=self.stop, on_retry=self._on_retry)
        self.node_id = self.client.node_id
        self.status = status or StatusLine(enabled=False)
        self.device = resolve_device(opts.device)
        self.info: dict[str, Any] = {}
        self.run_id = ""
        self.codec = "fp32"
        self.model: torch.nn.Module | None = None
        self.model_cfg: ModelConfig | None = None
        self.data_info: dict[str, Any] = {}
        self.template: dict[str, torch.Tensor] = {}
        self.signer: str | None = None
        self.fetcher: VersionFetcher | None = None
        self.version: int | None = None
        self.params: dict[str, torch.Tensor] | None = None
        self.chain = 0
        self.ef: ErrorFeedback | None = None
        self.held: dict[str, dict[str, Any]] = {}  # task_id -> task of every lease held right now
        self.kept: dict[str, dict[str, Any]] = {}  # leases of paused tasks: in lease.json, never given back
        self.progress: dict[str, Any] = {}  # the running task's progress, sent with heartbeats
        self.tasks_done = 0
        self.results: dict[str, int] = {}
        self.timer = PhaseTimer()
        self._saved_at, self._saved_version = -math.inf, None
        # task_id -> (r_in, r_out) of uploads that may have to be revealed (audited or outcome unknown)
        self.revealable: dict[str, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
        self._cannot_reveal: set[str] = set()
        # Deliveries may run on a background thread while the next task trains (worker/node.py): one lock
        # orders deliveries and reveals (the residual chain), one guards the model held, one the leases held.
        self._deliver_lock = threading.RLock()
        self._model_lock = threading.Lock()
        self._bytes_lock = threading.Lock()  # not _model_lock: a delivery must not wait for a model download
        self.model_bytes = self._model_bytes_recorded = 0
        self._held_lock = threading.Lock()

    def _on_retry(self, msg: str) -> None:
        self.status.update(note=msg)
        self.status.log(msg)

    @property
    def task(self) -> dict[str, Any] | None:
        """The most recent lease held (the one being trained), or None."""
        return next(reversed(self.held.values()), None) if self.held else None

    @property
    def reveals(self) -> RevealStore:
        """Residual pairs kept on disk for audits of this run (derived from the run id; stateless)."""
        return RevealStore(self.store.feedback_dir(self.run_id) / "reveal", REVEAL_KEEP)

    # ------------------------------------------------------------------ leases held
    def hold(self, task: dict[str, Any]) -> None:
        with self._held_lock:
            self.held[str(task["task_id"])] = task
            self._write_leases()

    def release(self, task_id: str) -> None:
        with self._held_lock:
            self.held.pop(task_id, None)
            self._write_leases()

    def keep(self, task: dict[str, Any]) -> None:
        """A paused task's lease: no longer held by this process (not given back when it exits), still named
        in lease.json for the next one."""
        with self._held_lock:
            self.held.pop(str(task["task_id"]), None)
            self.kept[str(task["task_id"])] = task
            self._write_leases()

    def _write_leases(self) -> None:
        """lease.json names the leases held (the newest at the top level), so a restarted node gives them back."""
        path = self.sopts.state_dir / LEASE_FILE
        tasks = [*self.held.values(), *self.kept.values()]
        if not tasks:
            path.unlink(missing_ok=True)
            return
        top = tasks[-1]
        doc = {"run_id": self.run_id, "task_id": top["task_id"], "shard_id": top.get("shard_id"),
               "seed": top.get("seed"), "also": [t["task_id"] for t in tasks[:-1]]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)

    def leftover_leases(self) -> list[str]:
        """Task ids a previous process of this node held in this run (from lease.json)."""
        try:
            old = json.loads((self.sopts.state_dir / LEASE_FILE).read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(old, dict) or old.get("run_id") != self.run_id or not isinstance(old.get("task_id"), str):
            return []
        return [t for t in [*(old.get("also") or []), old["task_id"]] if isinstance(t, str)]

    def give_back(self, task_id: str | None = None) -> None:
        """POST /v1/abandon for one held lease (default: the newest) so its shard is requeued at once."""
        if task_id is None:
            if self.task is None:
                return
            task_id = str(self.task["task_id"])
        self.release(task_id)
        try:
            self.client.abandon(task_id)
            self.status.log(f"abandoned lease {task_id}")
        except (ApiError, Unreachable, Stopped) as exc:
            self.status.log(f"could not abandon {task_id} ({exc}); its lease will expire")

    # ------------------------------------------------------------------ protocol steps
    def connect(self) -> None:
        """GET /v1/info, (re)build the run's model when the run changed, and register; Refused if refused."""
        try:
            self._connect()
        except ApiError as exc:
            self.status.log(f"registration refused: {exc}")
            raise Refused(str(exc)) from exc

    def _connect(self) -> None:
        info = self.client.info()
        cfg = ModelConfig.from_dict(info["model"])
        self.info = info
        self.data_info = dict(info.get("data") or {})
        run_id, codec = str(info["run_id"]), str(info.get("codec") or "fp32")
        if run_id != self.run_id or cfg != self.model_cfg or codec != self.codec:
            self.run_id, self.codec, self.model_cfg = run_id, codec, cfg
            self.model = self.build_model(cfg)
            self.template = params_of(self.model)
            self.version, self.params, self.chain = None, None, 0
            held = self.store.load_model(run_id, self.template)
            if held is not None:
                self.version, self.params, self.chain = held
                self._saved_version = self.version
            self.ef = ErrorFeedback.load(self.store.feedback_dir(run_id), codec)
        self.signer = info.get("signer")
        self.fetcher = VersionFetcher(self.client, self.template, self.signer)
        bits = int((info.get("limits") or {}).get("register_pow_bits") or 0)
        nonce = auth.solve_pow(run_id, auth.public_key_hex(self.key), bits) if bits > 0 else None
        reply = self.client.register(self.sopts.join_token, info={"device": self.device,
                                                                   "threads": torch.get_num_threads()},
                                     pow_nonce=nonce)
        self.status.log(f"registered {self.node_id} in run {self.run_id} (codec {self.codec}, device {self.device}, "
                        f"model {sum(t.numel() for t in self.template.values()):,} params)")
        if reply.get("run_id") not in (None, self.run_id):
            self.run_id = str(reply["run_id"])

    def build_model(self, cfg: ModelConfig) -> torch.nn.Module:
        """The run's model (the init is overwritten by the downloaded version anyway)."""
        torch.manual_seed(0)
        return build_model(cfg)

    @property
    def max_leases(self) -> int:
        return int((self.info.get("limits") or {}).get("max_leases_per_node") or 1)

    def lease(self, phase: str = "lease") -> dict[str, Any]:
        """POST /v1/lease: the reply (a task is held, and `_upload` added to it); handles a forgotten node
        (registers again) and refusals (RunDone with the exit status); reveals what the reply says is due."""
        with self.timer.span(phase):
            try:
                reply = self.client.lease()
            except ApiError as exc:
                if exc.code in ("unknown_node", "not_found") or exc.status == 404:
                    self.status.log("coordinator does not know this node (restarted?): registering again")
                    self.connect()
                    return {"task": None, "reason": "registered_again", "retry_after_s": 0.0}
                if exc.code in ("banned", "not_allowed", "run_done") or exc.status == 403:
                    self.status.log(f"lease refused: {exc}")
                    raise RunDone(0 if exc.code == "run_done" else 3, str(exc)) from None
                raise
        for task_id in reply.get("reveals_due") or []:
            self.reveal(str(task_id))
        task = reply.get("task")
        if task:
            task = dict(task, _upload=reply.get("upload"))
            self.hold(task)
            reply = dict(reply, task=task)
        return reply

    def no_task(self, reply: dict[str, Any], max_wait_s: float | None = None) -> None:
        """Act on a no-task lease reply: RunDone when the run is over or this node is banned, else wait the
        retry time (at most max_wait_s) and return."""
        reason, after = str(reply.get("reason", "")), reply.get("retry_after_s")
        if reason in ("done", "run_done"):
            raise RunDone(0, f"run is done; {self.tasks_done} task(s) from this node ({self.summary()})")
        if reason == "banned":
            raise RunDone(3, "this node is banned; stopping")
        if reason == "unknown_node":
            self.connect()
            return
        if reason == "registered_again":
            return
        if after is None:
            raise RunDone(0, f"no task ({reason}) and no retry time: stopping")
        cap = self.sopts.max_wait_s if max_wait_s is None else max_wait_s
        wait = min(max(float(after), 0.1), cap) if math.isfinite(float(after)) else cap
        self.status.update(phase="waiting", note=f"no task: {reason}")
        with self.timer.span("wait"):
            if self.stop.wait(wait):
                raise Stopped("stop")

    def ensure_model(self, base: int, phase: str = "download") -> dict[str, torch.Tensor]:
        """Hold version `base` of the published model: apply the published deltas since the version held
        (q4 of the difference, a few bits per parameter per version), or load the last full checkpoint when
        that is cheaper; every manifest's signature and every blob's sha256 are checked (worker/versions.py)."""
        with self._model_lock:
            if self.version == base and self.params is not None:
                return self.params
            have = (self.version, self.params) if self.params is not None and self.version is not None else None
            down0 = self.client.bytes_down
            with self.timer.span(phase):
                params = self.fetcher.get(base, have)
            with self._bytes_lock:
                self.model_bytes += self.client.bytes_down - down0  # tasks.jsonl: bytes_down_model
            self.params, self.version = params, base
            if time.monotonic() - self._saved_at >= SAVE_MODEL_EVERY_S:
                self.save_model()
            return params

    def _take_model_bytes(self) -> int:
        """Model bytes downloaded since the last task was recorded (a prefetch counts for the next task)."""
        with self._bytes_lock:
            n, self._model_bytes_recorded = self.model_bytes - self._model_bytes_recorded, self.model_bytes
        return n

    def save_model(self) -> None:
        """Write the model held to the state dir (a restart starts from it; `trainnet sample` reads it). Written
        at most every SAVE_MODEL_EVERY_S while working, and when the node stops: any held version is a valid
        start, the published deltas since it are applied on the next download."""
        if self.params is not None and self.version is not None and self._saved_version != self.version:
            self.store.save_model(self.params, self.version, self.run_id, self.model_cfg)
            self._saved_at, self._saved_version = time.monotonic(), self.version

    def fetch_shard(self, task: dict[str, Any], phase: str = "shard") -> torch.Tensor:
        """The task's shard as tokens: from the local cache, else downloaded and checked against its sha256."""
        shard_id, sha256 = int(task["shard_id"]), str(task["shard_sha256"])
        with self.timer.span(phase):
            data = self.store.cached_shard(sha256)
            if data is None:
                data = self.client.shard(shard_id)
                got = hashlib.sha256(data).hexdigest()
                if got != sha256:
                    raise ModelFormatError(f"shard {shard_id}: sha256 {got[:12]} != task's {sha256[:12]}")
                self.store.save_shard(sha256, data)
            return tokens_from_bytes(data, str(self.data_info.get("dtype", "uint8")),
                                     self.data_info.get("vocab_size"))

    def record(self, row: dict[str, Any]) -> None:
        # One JSON line per task, measured here (the demo's summary and loss curve read these).
        with open(self.sopts.state_dir / TASK_LOG, "a") as f:
            f.write(json.dumps(row) + "\n")

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.results.items())) or "no uploads"

    # ------------------------------------------------------------------ delivery
    def deliver(self, task: dict[str, Any], result: Any, down: int = 0, reading: EnergyReading | None = None,
                times: dict[str, float] | None = None) -> bool:
        """Error feedback -> encode -> sign -> upload one trained task (result: a TaskResult); then the residual
        bookkeeping, reveals, the task's log line. True if the coordinator accepted it. Deliveries of one node
        run one at a time, in order (the residual chain needs it), from any thread."""
        with self._deliver_lock:
            return self._deliver(task, result, down, reading, times or {})

    def _deliver(self, task: dict[str, Any], result: Any, down: int, reading: EnergyReading | None,
                 times: dict[str, float]) -> bool:
        task_id, base = str(task["task_id"]), int(task["base_version"])
        tok_s = result.tokens / max(result.time_s, 1e-9)
        t_enc = time.perf_counter()
        self.status.update(phase="encoding")
        codec = str(task.get("codec") or self.codec)
        # The update and the residual commitments (the digest of a zero or absent residual is EMPTY_DIGEST).
        encoded, old, new, commit = encode_committed(self.ef, result.delta, codec)
        revealable = commit["ef_in"] != EMPTY_DIGEST or commit["ef_out"] != EMPTY_DIGEST
        loss = result.loss_mean if math.isfinite(result.loss_mean) else result.loss_last
        energy = energy_extra(reading)
        extra = {"tokens": result.tokens, "steps": result.steps, **({"loss": float(loss)} if math.isfinite(loss) else {}),
                 **energy, **commit}
        body = encode_update(encoded, codec, run_id=self.run_id, node_id=self.node_id, task_id=task_id,
                             base_version=base, extra=extra)
        raw = sum(4 * t.numel() for t in result.delta.values())
        sha, hsha = hashlib.sha256(body).hexdigest(), header_sha256(body)
        sig = auth.sign_update(self.key, self.run_id, self.node_id, task_id, base, sha, hsha)
        meta = {"base_version": base, "sha256": sha, "header_sha256": hsha, "nbytes": len(body), "codec": codec,
                **extra}
        # Until the outcome is known the saved residual is the zero one (no file: ErrorFeedback.load gives empty
        # residuals, whose digest is the zero one's): a node killed mid-upload restarts from a reset, which
        # continues the coordinator's chain whatever became of the upload.
        (self.store.feedback_dir(self.run_id) / EF_FILE).unlink(missing_ok=True)
        if revealable:
            self.reveals.put(task_id, old, new)  # on disk before the upload: a restart can still reveal
        encode_s = time.perf_counter() - t_enc
        self.status.update(phase="uploading", raw=raw, sent=len(body))
        t_up = time.perf_counter()
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
                self.connect()
        except Unreachable as exc:
            outcome, unknown = f"unknown (upload failed: {exc})", True
        upload_s = time.perf_counter() - t_up
        self.release(task_id)
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
            outcome += ", audited: " + ("residuals revealed" if self.reveal(task_id) else "reveal pending")
        key = outcome.split(" ")[0] if accepted else outcome.split(" (")[0]
        self.results[key] = self.results.get(key, 0) + 1
        self.tasks_done += 1
        self.status.update(phase="done", last=outcome)
        timing = {**times, "encode_s": round(encode_s, 4), "upload_s": round(upload_s, 4)}
        self.record({"time": time.time(), "task_id": task_id, "shard_id": task["shard_id"], "base_version": base,
                     "steps": result.steps, "tokens": result.tokens, "loss_first": result.loss_first,
                     "loss_last": result.loss_last, "loss_mean": result.loss_mean, "train_s": result.time_s,
                     "tok_s": tok_s, "bytes_down": down, "bytes_down_model": self._take_model_bytes(),
                     "bytes_up": len(body), "bytes_raw": raw,
                     "accepted": accepted, "outcome": outcome, "audit_reveal": bool(audit.get("reveal")),
                     "timing": timing, **energy})
        self.status.log(
            f"task {task_id} shard {task['shard_id']} base v{base} steps {result.steps} "
            f"loss {result.loss_first:.3f}->{result.loss_last:.3f} {tok_s:,.0f} tok/s {result.time_s:.1f}s | "
            f"down {human_bytes(down)} up {human_bytes(len(body))} (fp32 {human_bytes(raw)}, "
            f"{raw / max(len(body), 1):.1f}x) | {outcome}")
        return accepted

    def reveal(self, task_id: str) -> bool:
        """POST the residuals of an audited task (kept in memory, or on disk from before a restart);
        True when delivered."""
        with self._deliver_lock:
            kept = self.revealable.get(task_id)
            body = reveal_body(*kept) if kept is not None else self.reveals.body(task_id)
            if body is None:
                if task_id not in self._cannot_reveal:  # said once, not at every lease
                    self._cannot_reveal.add(task_id)
                    self.status.log(f"audit of {task_id}: its residuals are not kept here (restarted?); "
                                    "cannot reveal")
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
