"""A run's control and data planes in one process, driven the way the simulator drives them.

    plane = Plane(make_tiny_config(...), shards=3)     # Runtime.open(sync=True) over memory state + blob stores
    plane.join("n0", "n1"); spec = plane.lease("n0")
    plane.upload(spec, delta(plane.layout, seed=1))     # encoded bytes in the blob store + the engine's submit
    plane.drain()                                       # aggregator merge tasks + Service.pump, to completion
    plane.published(v), plane.exact(v), plane.models.manifest(v)

Only the sockets and request signatures are skipped (the engine's submit gets what uploads.py would hand it), so
tests can also store bytes the HTTP ingest would have refused (a blob swapped or damaged after acceptance).
The audit secret and the coordinator's signing key are fixed, so two runs that differ only in their aggregator
shards make the same decisions and sign the same manifests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trainnet.aggregate import keys
from trainnet.aggregate.arrays import read_f32
from trainnet.aggregate.layout import ParamLayout
from trainnet.config import RunConfig
from trainnet.core import shard_ranges
from trainnet.data.corpus import Corpus
from trainnet.protocol.messages import LeaseRequest, Register, SubmitReply, TaskSpec, UpdateSubmission
from trainnet.protocol.wire import encode_update, header_sha256
from trainnet.server.runspec import RunSpec
from trainnet.server.runtime import Runtime
from trainnet.sim.simulator import Models, sim_limits
from trainnet.store.blob_memory import MemoryBlobStore
from trainnet.store.state_memory import MemoryStateStore

SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def tiny_corpus() -> Corpus:
    """16 shards of 2 kB of real text (this file's own source, repeated), every 4th held out."""
    text = Path(__file__).read_bytes()
    text = text * (1 + 32_768 // len(text))
    return Corpus([text[i * 2048:(i + 1) * 2048] for i in range(16)], "plane-kit", 4)


def plane_config(make_tiny_config: Any, **overrides: Any) -> RunConfig:
    """The tiny model (21,600 parameters in 9 tensors), 4,096-parameter blocks (6 of them), no verification."""
    base = {"aggregate.block": 4096, "consensus.verify_rate": 0, "consensus.quorum": 2, "sim.codec": '"q4"',
            "consensus.max_staleness": 4, "sim.tokens": 100_000}
    base.update(overrides)
    return make_tiny_config(**base)


def delta(layout: ParamLayout, seed: int, scale: float = 1e-2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(s, generator=g) for n, s in zip(layout.names, layout.shapes, strict=True)}


class Plane:
    def __init__(self, cfg: RunConfig, corpus: Corpus, shards: int | None = None, aggregators: int = 1) -> None:
        if shards is not None:
            cfg.aggregate.shards = shards
        self.cfg = cfg
        self.now = 0.0
        self.state, self.blobs = MemoryStateStore(), MemoryBlobStore()
        self.state.set_meta("audit_key", "plane-kit")
        self.state.set_meta("coordinator_key", SIGNING_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
        self.spec = RunSpec.load(cfg, corpus)
        self.rt = Runtime.open(cfg, "memory:", "memory:", sim_limits(cfg), aggregators=aggregators, evaluate=False,
                               sync=True, state=self.state, blobs=self.blobs, spec=self.spec,
                               clock=lambda: self.now)
        self.svc = self.rt.svc
        self.layout = self.spec.layout
        self.models = Models(self.spec, self.blobs, keep=64)
        self.drain()

    @property
    def core(self):
        return self.svc.core

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return shard_ranges(self.layout.numel, self.svc.ccfg.shards, self.svc.ccfg.block)

    # ------------------------------------------------------------------ the control plane
    def step(self, fn: Any) -> Any:
        return self.svc.step(fn)

    def join(self, *nodes: str) -> None:
        for n in nodes:
            assert self.step(lambda c, n=n: c.register(Register(n, public_key=hashlib.sha256(n.encode())
                                                                 .hexdigest()), self.now)).ok

    def lease(self, node: str) -> TaskSpec:
        spec = self.step(lambda c: c.lease(LeaseRequest(node), self.now))
        assert isinstance(spec, TaskSpec), spec
        return spec

    def encode(self, spec: TaskSpec, tensors: dict[str, torch.Tensor], **extra: Any) -> bytes:
        """The worker's upload: the task's codec, its ids, the counts the lease asked for."""
        return encode_update(tensors, spec.codec, run_id=spec.run_id, node_id=spec.node_id, task_id=spec.task_id,
                             base_version=spec.base_version,
                             extra={"tokens": spec.tokens, "steps": spec.hparams["steps"], **extra})

    def upload(self, spec: TaskSpec, tensors: dict[str, torch.Tensor] | None = None, data: bytes | None = None,
               stored: bytes | None = None, store: bool = True, **claims: Any) -> SubmitReply:
        """Store `stored` (default: `data`, default: the encoded `tensors`) under the task's upload key (unless
        not `store`) and submit what the node signed about `data` (sha256, size, header sha256), overridable by
        `claims`."""
        data = self.encode(spec, tensors) if data is None else data
        key = self.core.leases[spec.task_id].upload_key
        if store:
            self.blobs.put(key, data if stored is None else stored)
        msg = {"node_id": spec.node_id, "task_id": spec.task_id, "base_version": spec.base_version,
               "tokens": spec.tokens, "steps": spec.hparams["steps"], "blob": key,
               "sha256": hashlib.sha256(data).hexdigest(), "nbytes": len(data), "codec": spec.codec,
               "header_sha256": header_sha256(data)} | claims
        return self.step(lambda c: c.submit(UpdateSubmission(**msg), self.now))

    def drain(self) -> None:
        """Aggregators and the merge pump until nothing is left to do (merges take no virtual time)."""
        self.rt.drain(self.now)

    def at(self, t: float) -> Plane:
        self.now = t
        return self

    # ------------------------------------------------------------------ the data plane's products
    def versions(self) -> list[int]:
        return sorted(int(k[len("versions/v"):-len(".json")]) for k in self.blobs.list("versions/"))

    def shard_arrays(self, version: int, what: str) -> torch.Tensor:
        """An array every shard keeps per version (theta: exact parameters, mom, pub: the published
        reconstruction), concatenated over the shards."""
        return torch.cat([read_f32(self.blobs, keys.agg(s, version, what), 0, hi - lo)
                          for s, (lo, hi) in enumerate(self.ranges)])
