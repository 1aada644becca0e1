"""In-process harness for the protocol-attack tests: a real Runtime (service, API, aggregator) on a virtual
clock, signed requests built exactly as sim/client.py and worker/client.py build them, and hostile variants.

    h = Harness.open()                               # memory stores; Harness.open(tmp_path) for SQLite + files
    node = h.node()                                  # a registered SimNode
    task = h.lease(node)                             # {"task": {...}, "upload": {...}}["task"]
    body = h.honest_update(node, task)               # run_task on the task's shard, encoded and committed
    h.upload(node, task, body)                       # begin -> put_stream -> finish, like the HTTP shell
    h.drain()                                        # merges to completion
    before = h.stored(); ...; assert h.stored() == before      # nothing stored for a refused request

The handlers are framework-free (server/api.py), so every check here runs the same code the HTTP shell runs,
in the same order: headers (signature, run, counter) before the body, cheap checks before storing bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from trainnet.codec.base import DTYPE_NAMES
from trainnet.codec.spec import parse_codec
from trainnet.config import RunConfig, load_config
from trainnet.protocol import auth
from trainnet.protocol.messages import TaskSpec
from trainnet.protocol.wire import FORMAT_VERSION, HASH_BLOCK, MAGIC, PREFIX, block_hashes, header_sha256
from trainnet.server.limits import ApiError, ServerLimits
from trainnet.server.runspec import RunSpec, build_model
from trainnet.server.runtime import Runtime
from trainnet.sim.client import SimNode
from trainnet.store.blob_fs import FsBlobStore
from trainnet.store.state import StateStore
from trainnet.train.local import TaskHParams, run_task
from trainnet.verify.commit import CommittingUploader
from trainnet.worker.reveal import reveal_body

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
        "data.shard_bytes=32768", "data.val_every=8", "data.max_bytes=1048576", "inner.batch_size=4",
        "consensus.h=5", "consensus.quorum=2", "consensus.lease_s=600.0", "consensus.grace_s=1000.0",
        "sim.tokens=2000000", "sim.codec=q2"]
T0 = 1_000_000.0  # the virtual clock's start (seconds)
CLIENT = "203.0.113.7"  # the address every in-process request comes from unless a test says otherwise


def tiny_cfg(*overrides: str, name: str = "attacks") -> RunConfig:
    """The tiniest run (21,600 parameters, 1 MB of stdlib): defaults for everything security-related."""
    return load_config(None, TINY + [f"name={json.dumps(name)}", *overrides])


_SPECS: dict[str, RunSpec] = {}


def spec_of(cfg: RunConfig) -> RunSpec:
    """RunSpecs cached per config (the corpus and model layout are the slow part of opening a run)."""
    key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    if key not in _SPECS:
        _SPECS[key] = RunSpec.load(cfg)
    return _SPECS[key]


def server_limits(**kw: Any) -> ServerLimits:
    """ServerLimits as shipped, with per-node request rates off (in-process tests send bursts)."""
    return ServerLimits(**({"rate_per_s": 0.0} | kw))


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    rt: Runtime
    clock: Clock
    rng: random.Random
    uploaders: dict[str, CommittingUploader] = field(default_factory=dict)
    residuals: dict[str, bytes] = field(default_factory=dict)  # task_id -> reveal body (honest uploads)
    model: torch.nn.Module | None = None

    @classmethod
    def open(cls, root: Path | None = None, cfg: RunConfig | None = None, limits: ServerLimits | None = None,
             state: StateStore | None = None, clock: Clock | None = None, seed: int = 0) -> Harness:
        """A sync Runtime with one in-process aggregator: memory stores, or SQLite + files under `root`."""
        cfg = cfg or tiny_cfg()
        clock = clock or Clock()
        blobs = FsBlobStore(root / "blobs") if root is not None else None
        state_url = f"sqlite:///{root / 'coordinator.db'}" if root is not None else "memory:"
        rt = Runtime.open(cfg, state_url, "memory:" if root is None else str(root / "blobs"),
                          limits or server_limits(), aggregators=1, evaluate=False, sync=True, state=state,
                          blobs=blobs, spec=spec_of(cfg), clock=clock)
        h = cls(rt, clock, random.Random(seed))
        h.drain()
        return h

    def close(self) -> None:
        self.rt.close()

    # ------------------------------------------------------------------ shortcuts
    @property
    def api(self) -> Any:
        return self.rt.api

    @property
    def svc(self) -> Any:
        return self.rt.svc

    @property
    def core(self) -> Any:
        return self.rt.svc.core

    @property
    def run_id(self) -> str:
        return self.svc.ccfg.run_id

    def drain(self) -> None:
        self.rt.drain(self.clock.now)

    def tick(self, dt: float = 0.0) -> None:
        self.clock.now += dt
        self.svc.tick(self.clock.now)
        self.drain()

    # ------------------------------------------------------------------ nodes and signed requests
    def new_node(self) -> SimNode:
        return SimNode.make(self.rng.randrange(1 << 30), self.rng)

    def node(self, client: str = CLIENT, **body: Any) -> SimNode:
        n = self.new_node()
        self.register(n, client=client, **body)
        return n

    def register(self, n: SimNode, client: str = CLIENT, key: Any = None, **extra: Any) -> dict[str, Any]:
        """Register `n` (self-signed; `key` signs instead when given: the wrong-key attack)."""
        body = json.dumps({"public_key": n.public_key, "info": {"device": "test"}} | extra).encode()
        signer = key or n.key
        headers = auth.sign_request(signer, n.node_id, self.run_id, "POST", "/v1/register", body, self.clock.now,
                                    n.counter.next(self.clock.now))
        out = self.api.register(headers, body, client, self.clock.now)
        n.counter.bump(out["min_counter"])
        return out

    def headers(self, n: SimNode, method: str, path: str, body: bytes, *, run_id: str | None = None,
                now: float | None = None, counter: int | None = None, key: Any = None,
                body_for_hash: bytes | None = None) -> dict[str, str]:
        """Signing headers as a worker makes them; every argument can be made to lie."""
        t = self.clock.now if now is None else now
        ctr = n.counter.next(self.clock.now) if counter is None else counter
        return auth.sign_request(key or n.key, n.node_id, run_id or self.run_id, method, path,
                                 body if body_for_hash is None else body_for_hash, t, ctr)

    def post(self, n: SimNode, path: str, payload: dict[str, Any] | bytes, handler: Callable[..., Any],
             headers: dict[str, str] | None = None) -> Any:
        """What app.py's signed_json does: caller from headers, then the body checked against its hash."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        hdrs = headers or self.headers(n, "POST", path, body)
        caller = self.api.auth.caller(hdrs, "POST", path, self.clock.now)
        self.api.auth.check_body(caller, body)
        return handler(caller, body, self.clock.now)

    def lease(self, n: SimNode) -> dict[str, Any]:
        reply = self.post(n, "/v1/lease", {}, self.api.lease)
        assert reply["task"] is not None, reply
        return reply["task"]

    # ------------------------------------------------------------------ updates
    def honest_delta(self, task: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The task trained for real from the published base (version 0's weights: tests stay at version 0,
        or pass a later base through `base`)."""
        spec = TaskSpec(**task)
        if self.model is None:
            self.model = build_model(self.svc.spec.cfg, seed=0)
        base = self.base_params(spec.base_version)
        shard = self.svc.spec.corpus.shard(spec.shard_id, expect_sha256=spec.shard_sha256)
        return run_task(self.model, base, shard.tokens, TaskHParams(**spec.hparams), seed=spec.seed).delta

    def base_params(self, version: int) -> dict[str, torch.Tensor]:
        return self.api.audits.base_params(version)

    def encode(self, n: SimNode, task: dict[str, Any], delta: dict[str, torch.Tensor], keep: bool = True,
               header_node: str | None = None) -> bytes:
        """Encode as the worker does (error feedback, residual commitments). `keep=False`: a throwaway encoder,
        so a hostile variant does not advance the node's residual chain; `task` fields may be made to lie."""
        up = self.uploaders.setdefault(n.node_id, CommittingUploader(self.svc.ccfg.codec)) if keep else \
            CommittingUploader(self.svc.ccfg.codec)
        data = up.encode(delta, TaskSpec(**task), header_node or n.node_id)
        if keep:
            self.residuals[task["task_id"]] = reveal_body(*up.last_residuals)
        return data

    def honest_update(self, n: SimNode, task: dict[str, Any]) -> bytes:
        return self.encode(n, task, self.honest_delta(task))

    def upload(self, n: SimNode, task: dict[str, Any], body: bytes, *, sig: str | None = None,
               headers: dict[str, str] | None = None, content_length: int | None = -1,
               base_version: int | None = None) -> dict[str, Any]:
        """The direct-upload path of app.py: caller, begin (before the body), stream into the store, finish."""
        task_id = task["task_id"]
        path = f"/v1/update/{task_id}"
        hdrs = headers or self.headers(n, "POST", path, body)
        if sig is None and len(body) >= PREFIX.size:
            sig = auth.sign_update(n.key, self.run_id, n.node_id, task_id,
                                   task["base_version"] if base_version is None else base_version,
                                   hashlib.sha256(body).hexdigest(), header_sha256(body))
        caller = self.api.auth.caller(hdrs, "POST", path, self.clock.now)
        ticket = self.api.uploads.begin(caller, task_id, len(body) if content_length == -1 else content_length,
                                        self.clock.now)
        size, sha = self.svc.blobs.put_stream(ticket.key, [body], ticket.max_bytes)
        return self.api.uploads.finish(caller, ticket, size, sha, sig, self.clock.now)

    def reveal(self, n: SimNode, task_id: str, body: bytes | None = None) -> dict[str, Any]:
        body = self.residuals[task_id] if body is None else body
        path = f"/v1/audit/{task_id}/residuals"
        caller = self.api.auth.caller(self.headers(n, "POST", path, body), "POST", path, self.clock.now)
        self.api.audits.check_reveal(caller, task_id, self.clock.now)
        self.api.auth.check_body(caller, body)
        return self.api.audits.reveal(caller, task_id, body, self.clock.now)

    # ------------------------------------------------------------------ what is stored
    def stored(self) -> dict[str, Any]:
        """Everything a request could leave behind: blobs, log rows, buffered updates, leases, audits."""
        st = self.svc.state
        core = self.core
        return {"blobs": sorted(self.svc.blobs.list()),
                "logs": {k: st.log_count(k) for k in ("updates", "audits", "versions")},
                "buffer": sorted(core.buffer), "leases": sorted(core.leases), "audits": sorted(core.audits),
                "nodes": len(core.nodes), "version": core.version}


def refusal(fn: Callable[[], Any]) -> ApiError:
    """The ApiError `fn` raises (the test fails if it returns)."""
    with pytest.raises(ApiError) as info:
        fn()
    return info.value


def files_under(root: Path) -> dict[str, int]:
    """Every regular file below `root` (relative path -> size)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def craft_update(codec: str, tensors: list[tuple[str, list[int]]], *, run_id: str, node_id: str, task_id: str,
                 base_version: int, extra: dict[str, Any]) -> bytes:
    """A well-formed wire message whose header claims anything (zero payload of exactly the declared size):
    the attacker's tool for lies about shapes, codecs and sizes without allocating what they claim."""
    c = parse_codec(codec)
    entries, cursor = [], 0
    for name, shape in tensors:
        numel = 1
        for d in shape:
            numel *= d
        parts = []
        for p in c.layout(numel):
            parts.append({"name": p.name, "dtype": DTYPE_NAMES[p.dtype], "offset": cursor, "length": p.nbytes,
                          "sha256": block_hashes(bytes(p.nbytes))})
            cursor += p.nbytes
        entries.append({"name": name, "shape": shape, "dtype": "float32", "numel": numel, "parts": parts})
    payload = b"\0" * cursor
    header = {"format": FORMAT_VERSION, "hash_block": HASH_BLOCK, "run_id": run_id, "node_id": node_id,
              "task_id": task_id, "base_version": base_version, "codec": c.spec, "extra": extra,
              "tensors": entries, "payload_bytes": cursor, "payload_sha256": hashlib.sha256(payload).hexdigest()}
    hb = json.dumps(header).encode()
    return PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(hb)) + hb + payload
