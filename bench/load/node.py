"""Lightweight protocol-2.0 clients for load tests: real ed25519 keys, real signed requests over real HTTP, and
small valid updates of the run's model (random values, q2-encoded once; no training).

    http = MiniHttp("127.0.0.1", port, max_connections=256, timeout_s=10.0)     # load/http.py
    maker = UpdateMaker(info)                     # /v1/info: model shape, codec, run id
    node = SwarmNode(http, info["run_id"], maker, seed=i)
    r = await node.register(); r = await node.lease(); r = await node.heartbeat(task_id); r = await node.upload(task)
    r.status, r.data, r.ms, r.error                # error: "" | "timeout" | "connect" | "disconnect" | ...

Every call returns a Reply and never raises for HTTP or transport errors, so a load loop can count them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trainnet.codec.base import EncodedTensor
from trainnet.codec.spec import parse_codec
from trainnet.model.gpt import GPT, GPTConfig
from trainnet.protocol import auth
from trainnet.protocol.wire import encode_update, header_sha256
from trainnet.train.local import params_of

from .http import HttpError, MiniHttp


@dataclass
class Reply:
    status: int  # 0 when no HTTP answer came (see error)
    data: dict[str, Any]
    ms: float
    error: str = ""


class UpdateMaker:
    """Encodes updates of the run's model shape: `variants` random deltas, each q2-encoded once, reused with
    a fresh header (run, node, task, base version, tokens, steps) per upload."""

    def __init__(self, info: dict[str, Any], variants: int = 4, scale: float = 1e-3) -> None:
        fields = {f.name for f in dataclasses.fields(GPTConfig)}
        torch.manual_seed(0)
        template = params_of(GPT(GPTConfig(**{k: v for k, v in info["model"].items() if k in fields})))
        self.codec_spec = str(info["codec"])
        self.codec = parse_codec(self.codec_spec)
        gen = torch.Generator().manual_seed(1234)
        self.variants: list[dict[str, EncodedTensor]] = []
        for _ in range(variants):
            delta = {k: torch.randn(v.shape, generator=gen) * scale for k, v in template.items()}
            self.variants.append({k: self.codec.encode(t) for k, t in delta.items()})

    def body(self, run_id: str, node_id: str, task: dict[str, Any], variant: int) -> bytes:
        extra = {"tokens": int(task["tokens"]), "steps": int(task["hparams"]["steps"]), "loss": 3.0}
        return encode_update(self.variants[variant % len(self.variants)], self.codec, run_id=run_id,
                             node_id=node_id, task_id=str(task["task_id"]), base_version=int(task["base_version"]),
                             extra=extra)


class SwarmNode:
    """One simulated worker: its own key and request counter, sharing the HTTP client of the process."""

    def __init__(self, http: MiniHttp, run_id: str, maker: UpdateMaker | None, seed: int) -> None:
        self.http, self.run_id, self.maker, self.seed = http, run_id, maker, seed
        self.key = Ed25519PrivateKey.generate()
        self.pub = auth.public_key_hex(self.key)
        self.node_id = auth.node_id_of(bytes.fromhex(self.pub))
        self.counter = auth.Counter()

    async def _post(self, path: str, body: bytes, headers: dict[str, str] | None = None,
                    sign: bool = True) -> Reply:
        h = dict(headers or {})
        if sign:
            now = time.time()
            h.update(auth.sign_request(self.key, self.node_id, self.run_id, "POST", path, body, now,
                                       self.counter.next(now)))
        t0 = time.perf_counter()
        try:
            status, _, raw = await self.http.request("POST", path, body, h)
        except TimeoutError:
            return Reply(0, {}, 1e3 * (time.perf_counter() - t0), "timeout")
        except ConnectionRefusedError:
            return Reply(0, {}, 1e3 * (time.perf_counter() - t0), "connect")
        except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
            return Reply(0, {}, 1e3 * (time.perf_counter() - t0), "disconnect" if isinstance(
                exc, asyncio.IncompleteReadError | ConnectionResetError) else type(exc).__name__)
        ms = 1e3 * (time.perf_counter() - t0)
        try:
            data = json.loads(raw)
        except ValueError:
            data = {}
        return Reply(status, data if isinstance(data, dict) else {}, ms)

    @staticmethod
    def _json(doc: dict[str, Any]) -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    async def register(self) -> Reply:
        r = await self._post("/v1/register", self._json({"public_key": self.pub, "info": {"device": "loadbench"}}))
        if r.status == 200 and isinstance(r.data.get("min_counter"), int):
            self.counter.bump(r.data["min_counter"])
        return r

    async def lease(self) -> Reply:
        return await self._post("/v1/lease", b"{}")

    async def heartbeat(self, task_id: str) -> Reply:
        return await self._post("/v1/heartbeat", self._json({"task_id": task_id}))

    def update(self, task: dict[str, Any]) -> tuple[bytes, str]:
        """The encoded update of `task` and its signature (X-TrainNet-Update-Signature)."""
        assert self.maker is not None
        body = self.maker.body(self.run_id, self.node_id, task, self.seed)
        sig = auth.sign_update(self.key, self.run_id, self.node_id, str(task["task_id"]), int(task["base_version"]),
                               hashlib.sha256(body).hexdigest(), header_sha256(body))
        return body, sig

    async def upload(self, task: dict[str, Any], upload: dict[str, Any] | None = None,
                     prepared: tuple[bytes, str] | None = None) -> Reply:
        """POST the update to the path the lease reply named (direct upload; filesystem blob store)."""
        body, sig = prepared or self.update(task)
        path = (upload or {}).get("url") or f"/v1/update/{task['task_id']}"
        if not str(path).startswith("/"):
            raise ValueError(f"presigned uploads are not supported by this load client: {path}")
        return await self._post(path, body, {auth.HDR_UPDATE_SIG: sig, "Content-Type": "application/octet-stream"})
