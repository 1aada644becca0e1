"""One Coordinator core plus its durable store: every state change is committed before it is answered.

    svc = CoordinatorService(load_config("run.toml"), Path("state"), ServerLimits())
    svc.register_node(...); svc.lease(node_id, now); svc.submit_update(node_id, headers, body, now)
    svc.tick(time.time())       # every second from the app's background task

Every operation runs the core under one lock and then `_persist`s the step in one SQLite
transaction (blobs fsynced first). If anything fails between the core call and the commit, the
in-memory core is rebuilt from the store (`_load`), so memory never runs ahead of the disk.
Restart = `_load`: latest checkpoint, outer momentum, counters, nodes, leases (kept with their
deadlines; overdue ones expire at the first tick and their shards are requeued), and the
accepted-but-unmerged updates re-decoded from their stored wire bytes and re-buffered in order.

Verification (consensus.verify_rate > 0; audits.py): the residual commitment chain and pending audits
are part of every `_persist`; `verify_due(now)` (the app's verifier loop) fails overdue reveals and
recomputes ready audits off the lock, or, with `ServerLimits.verifiers = "nodes"`, only fails overdue reveals
while designated verifier nodes claim and recompute the audits (verifier_api.py). The audit key that decides which tasks are audited is a random
secret made on first start and kept in the store (never in the fingerprint, never served).

Observability: `evaluate_if_due(now)` (called by the app's evaluator task, off the request path)
measures the held-out loss of each new model version on fixed validation windows (at most every
`eval_interval_s`; always the first and the final version) and stores (version, tokens, val_loss, time)
in SQLite; `count_bytes(kind, n)` tallies bytes served, flushed to the store by `flush_traffic()`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from trainnet.codec.spec import parse_codec
from trainnet.config import RunConfig
from trainnet.coordinator.audits import AuditBook, AuditRunner
from trainnet.coordinator.core import Buffered, Coordinator
from trainnet.coordinator.limits import ServerLimits
from trainnet.coordinator.state import (
    core_meta,
    event_to_row,
    lease_from_row,
    lease_to_row,
    node_from_row,
    node_to_row,
    restore,
)
from trainnet.coordinator.store import DROPPED, Store
from trainnet.dashboard.trackers import make_tracker
from trainnet.data.corpus import load_run_corpus
from trainnet.model.gpt import GPT
from trainnet.models import build_model
from trainnet.protocol.wire import WireLimits, decode_update
from trainnet.sim.simulator import coordinator_config
from trainnet.train.local import evaluate, flatten, params_of

log = logging.getLogger("trainnet.coordinator")

CRASH_ENV = "TRAINNET_TEST_CRASH"  # tests only: "point" or "point:n" -> SIGKILL self the n-th time


class StoreMismatch(RuntimeError):
    """The state directory belongs to a different run (model, data or consensus settings changed)."""


class CoordinatorService:
    def __init__(self, cfg: RunConfig, state_dir: Path, limits: ServerLimits | None = None,
                 eval_interval_s: float = 2.0, tracker: str | None = None) -> None:
        self.cfg = cfg
        self.started_at = time.time()
        self.eval_interval_s = eval_interval_s
        self._last_eval = 0.0
        self._eval_model: GPT | None = None
        self.tracker = make_tracker(tracker, Path(state_dir), cfg.name)  # optional, off by default
        self._traffic: dict[str, int] = {}  # bytes counted since the last flush_traffic()
        self._traffic_lock = threading.Lock()
        self.limits = limits or ServerLimits()
        self.ccfg = coordinator_config(cfg)
        self.codec = parse_codec(cfg.sim.codec).spec
        self.corpus = load_run_corpus(cfg)
        self.wire_limits = WireLimits(max_total_bytes=self.limits.max_update_bytes)
        self.store = Store(Path(state_dir))
        self.ccfg.audit_key = self._audit_key()
        self.reveal_s = self.limits.reveal_s or 10.0 * self.ccfg.lease_s
        self.verifier_keys = self._verifier_keys(self.limits)
        if self.ccfg.verify_rate > 0 and self.ccfg.precision == "bf16" and self.limits.verifiers == "coordinator" \
                and not self.limits.verify_device.startswith("cuda"):
            raise ValueError("inner.precision = 'bf16' with consensus.verify_rate > 0 needs a GPU verifier "
                             "(ServerLimits.verify_device = 'cuda'); or use precision 'fp32'/'auto'")
        self.auditor = AuditRunner(self)
        self._val_done = self.store.val_versions()  # versions with a stored held-out loss
        self.lock = threading.Lock()
        self._crash: dict[str, int] = {}
        self._load()
        if self.coord.version == 0:  # the curve starts at the initial model, before any worker can move it
            self.evaluate_if_due(time.time())
        self._crash = self._parse_crash(os.environ.get(CRASH_ENV, ""))  # armed after startup

    # ------------------------------------------------------------------ build / restore
    @staticmethod
    def _verifier_keys(limits: ServerLimits) -> frozenset[str]:
        """The designated verifiers (lowercase hex keys / node ids); checks the verifiers setting."""
        if limits.verifiers not in ("coordinator", "nodes"):
            raise ValueError(f"verifiers must be 'coordinator' or 'nodes', not {limits.verifiers!r}")
        keys = frozenset(k.strip().lower() for k in limits.verifier_keys if k.strip())
        if limits.verifiers == "nodes" and not keys:
            raise ValueError("verifiers = 'nodes' needs at least one verifier key (--verifier-keys FILE)")
        if limits.verifiers == "coordinator" and keys:
            raise ValueError("verifier keys are only used with verifiers = 'nodes'")
        return keys

    def _audit_key(self) -> str:
        key = self.store.get_meta("audit_key")
        if not isinstance(key, str):
            key = secrets.token_hex(16)
            self.store.set_meta("audit_key", key)
        return key

    def _fingerprint(self) -> dict[str, Any]:
        coordinator = dataclasses.asdict(self.ccfg)
        coordinator.pop("audit_key")  # a secret, and not a setting of the run
        return {"run": self.cfg.name, "model": dataclasses.asdict(self.cfg.model),
                "coordinator": coordinator, "codec": self.codec,
                "manifest_root": self.corpus.manifest.root_hash}

    def _new_book(self) -> AuditBook:
        return AuditBook(self.reveal_s, enforce=self.ccfg.verify_rate > 0)

    def _fresh_core(self) -> Coordinator:
        torch.manual_seed(self.ccfg.seed)
        return Coordinator(self.ccfg, self.corpus.manifest, params_of(build_model(self.cfg.model)))

    def _load(self) -> None:
        """(Re)build the core from the store; initialise the store on first start."""
        coord = self._fresh_core()
        snap = self.store.load()
        fp = self._fingerprint()
        if snap is None:
            self.store.set_meta("fingerprint", fp)
            self.coord, self.persisted_version, self.unmerged, self.outer_path = coord, -1, [], None
            self.audits = self._new_book()
            self._persist(time.time())
            log.info("new store at %s (%d parameters)", self.store.dir, coord.num_params)
            return
        old = self.store.get_meta("fingerprint")
        if isinstance(old, dict) and isinstance(old.get("coordinator"), dict):
            old["coordinator"].pop("audit_key", None)  # stores written before the key was secret
            # settings added since the store was written take their defaults (what that code did)
            for k, v in dataclasses.asdict(type(self.ccfg)()).items():
                if k != "audit_key":
                    old["coordinator"].setdefault(k, v)
        if old != fp:
            raise StoreMismatch(f"{self.store.dir} holds another run's state; settings differ: "
                                f"{sorted(k for k in fp if (old or {}).get(k) != fp[k])}")
        params = st_load(self.store.read_blob(snap["checkpoint"]))
        outer = snap["outer"]
        momentum = None
        if outer and outer["path"]:
            momentum = st_load(self.store.read_blob(outer["path"]))["momentum"]
        restore(coord, snap["meta"], [node_from_row(n) for n in snap["nodes"]],
                [lease_from_row(r) for r in snap["leases"]], [], flatten(params, coord.template), momentum)
        if coord.cfg.stale_mode == "endpoint":  # reload the versions stale updates are re-based from
            coord.history.clear()
            for v in range(max(0, coord.version - coord.cfg.max_staleness), coord.version + 1):
                path = self.store.version_path(v)
                if path is not None:
                    coord.history[v] = flatten(st_load(self.store.read_blob(path)), coord.template)
        buffer = []
        for u in snap["unmerged"]:
            upd = decode_update(self.store.read_blob(u["path"]), limits=self.wire_limits)
            flat = coord.rebase(flatten(upd.tensors, coord.template), coord.version - u["staleness"])
            buffer.append(Buffered(u["node_id"], u["task_id"], flat, u["tokens"], u["staleness"], u["arrived"]))
        coord.buffer = buffer
        book = self._new_book()
        book.restore(coord, snap, lambda p: decode_update(self.store.read_blob(p), limits=self.wire_limits).tensors,
                     time.time())
        if coord.version != snap["version"]:
            raise StoreMismatch(f"counters say version {coord.version}, latest checkpoint is {snap['version']}")
        self.coord, self.persisted_version, self.audits = coord, coord.version, book
        self.unmerged = [b.task_id for b in buffer]
        self.outer_path = outer["path"] if outer else None
        removed = self.store.cleanup_orphans()
        log.info("restored version %d: %d nodes, %d leases, %d buffered updates, %d pending audits "
                 "(%d orphan files removed)", coord.version, len(coord.nodes), len(coord.leases), len(buffer),
                 len(coord.audits), removed)

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def _parse_crash(text: str) -> dict[str, int]:
        if not text:
            return {}
        point, _, n = text.partition(":")
        return {point: int(n or 1)}

    def crash_point(self, name: str) -> None:
        """Tests only: die like `kill -9` the n-th time execution passes `name`."""
        if name in self._crash:
            self._crash[name] -= 1
            if self._crash[name] <= 0:
                os.kill(os.getpid(), signal.SIGKILL)

    def _persist(self, now: float, new_update: dict[str, Any] | None = None) -> None:
        """Commit the core's current state (one transaction), after writing any new checkpoint."""
        coord = self.coord
        new_version = outer_path = None
        old_outer = self.outer_path
        version_changed = coord.version != self.persisted_version
        if version_changed:
            data = st_save({k: v.contiguous().clone() for k, v in coord.params().items()},
                           metadata={"trainnet_model_config": json.dumps(dataclasses.asdict(self.cfg.model)),
                                     "version": str(coord.version)})
            path = self.store.write_blob(f"checkpoints/v{coord.version:08d}.safetensors", data)
            new_version = (coord.version, path, now)
            mom = coord.outer.state_dict()
            if mom:
                outer_path = self.store.write_blob(f"outer/v{coord.version:08d}.safetensors", st_save(mom))
            self.crash_point("checkpoint_written")
        pending = self.unmerged + ([new_update["task_id"]] if new_update else [])
        buffered = {b.task_id for b in coord.buffer}
        merged = [(t, coord.version if version_changed else DROPPED) for t in pending if t not in buffered]
        self.store.commit(
            meta=core_meta(coord), nodes=[node_to_row(n) for n in coord.nodes.values()],
            leases=[lease_to_row(lease) for lease in coord.leases.values()],
            events=[event_to_row(e) for e in coord.drain_events()], new_update=new_update, merged=merged,
            new_version=new_version, outer_path=outer_path,
            outer_version=coord.version if version_changed else None, **self.audits.commit_args(coord, now),
        )
        self.audits.committed(self.store)
        self.crash_point("after_commit")
        self.persisted_version = coord.version
        self.unmerged = [t for t in pending if t in buffered]
        if version_changed:
            self.outer_path = outer_path
            if old_outer and old_outer != outer_path:
                self.store.delete_blob(old_outer)
            self._prune()

    def _prune(self) -> None:
        vs = self.store.versions()
        keep = set(vs[-max(1, self.limits.keep_versions, self.ccfg.max_staleness + 1):]) | {self.coord.version}
        keep |= {lease.spec.base_version for lease in self.coord.leases.values()}
        keep |= {a.spec.base_version for a in self.coord.audits.values()}  # the verifier recomputes from them
        self.store.prune_versions(keep)

    def locked_step(self, fn: Callable[[], Any], now: float,
                    persist: bool | Callable[[Any], bool] = True) -> Any:
        """Run `fn()` on the core under the lock, then persist (if `persist`, or `persist(result)`).
        On any failure the core is rebuilt from the store, so memory never runs ahead of the disk."""
        with self.lock:
            try:
                result = fn()
                if persist is True or (callable(persist) and persist(result)):
                    self._persist(now)
                return result
            except BaseException:
                log.exception("coordinator step failed; reloading state from the store")
                try:
                    self._load()
                except Exception:  # the store itself is unreadable: nothing sane is left to serve
                    log.exception("reload failed")
                    raise
                raise

    # ------------------------------------------------------------------ background
    def tick(self, now: float) -> None:
        """Expire overdue leases and run grace-window merges; persist if anything happened."""
        with self.lock:
            try:
                self.coord.tick(now)
                if self.coord.has_events or self.coord.version != self.persisted_version:
                    self._persist(now)
            except BaseException:
                log.exception("tick failed; reloading state from the store")
                self._load()
                raise

    def verify_due(self, now: float) -> int:
        """One round of the verifier loop (audits.AuditRunner); returns how many audits were decided."""
        if self.ccfg.verify_rate <= 0:
            return 0
        if self.limits.verifiers == "nodes":  # designated verifier nodes recompute (verifier_api.py)
            return self.auditor.expire(now)
        return self.auditor.run_due(now, self.limits.verify_budget_s)

    # ------------------------------------------------------------------ observability
    def evaluate_if_due(self, now: float) -> float | None:
        """Held-out loss of the current version if it has none yet and the interval has passed (the
        first and the final version are always evaluated). Evaluates outside the lock on a copy, so
        requests are not held up; returns the loss, or None when nothing was due."""
        val_ids = self.corpus.manifest.ids("val")
        if not val_ids:
            return None
        with self.lock:
            version, done = self.coord.version, self.coord.done
            tokens = self.coord.tokens_accepted
            if version in self._evaluated():
                return None
            if not (version == 0 or done or now - self._last_eval >= self.eval_interval_s):
                return None
            params = {k: v.clone() for k, v in self.coord.params().items()}
        if self._eval_model is None:
            torch.manual_seed(0)  # the init is overwritten by the evaluated parameters
            self._eval_model = build_model(self.cfg.model)
        s = self.cfg.sim  # the simulator's evaluation settings, so curves are comparable
        val = [self.corpus.shard(i).tokens for i in val_ids]
        loss = evaluate(self._eval_model, params, val, s.eval_batches, s.eval_batch_size, self.cfg.model.block_size)
        self._last_eval = now
        with self.lock:
            self.store.add_val_point(version, tokens, float(loss), now)
            self._val_done.add(version)
        self.tracker.log(version, {"val_loss": float(loss), "tokens": float(tokens)})
        return float(loss)

    def _evaluated(self) -> set[int]:
        return self._val_done

    def count_bytes(self, kind: str, n: int) -> None:
        """Tally bytes served or received (kinds: model_full, model_delta, shard, update_in)."""
        with self._traffic_lock:
            self._traffic[kind] = self._traffic.get(kind, 0) + int(n)

    def traffic_pending(self) -> dict[str, int]:
        with self._traffic_lock:
            return dict(self._traffic)

    def flush_traffic(self) -> None:
        """Add the bytes counted since the last flush to the store's totals."""
        with self._traffic_lock:
            counts, self._traffic = self._traffic, {}
        if counts:
            with self.lock:
                self.store.add_traffic(counts)

    def close(self) -> None:
        self.flush_traffic()
        with self.lock:
            self.store.close()
