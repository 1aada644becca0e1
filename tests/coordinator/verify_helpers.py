"""Helpers for the verification-through-the-server tests: a coordinator process with chosen settings and
ServerLimits, and a worker made of library parts (CoordinatorClient, run_task, ErrorFeedback) that can
also forge.

    srv = VerifyServer(make_run(tmp), tmp / "state", free_port(), sets=VERIFY_SETS, limits={"reveal_s": 2})
    node = Node(srv.url, tmp / "k")
    task = node.lease(); body, r_in, r_out = node.encode(task, node.train(task))
    reply = node.upload(task, body); node.reveal(task, r_in, r_out)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from helpers import SRC, ServerProc
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from trainnet.codec import ErrorFeedback
from trainnet.models import ModelConfig, build_model
from trainnet.protocol.auth import load_or_create_key, sign_request, sign_update
from trainnet.protocol.wire import encode_update
from trainnet.train.local import TaskHParams, run_task
from trainnet.verify import residual_digest
from trainnet.worker.client import CoordinatorClient, RetryPolicy

# Every accepted task audited; a lossy codec with error feedback, so residuals must be revealed.
VERIFY_SETS = ["consensus.verify_rate=1.0", 'sim.codec="q2"']

_LAUNCH = """
import json, sys
from pathlib import Path
from trainnet.config import load_config
from trainnet.coordinator.limits import ServerLimits
from trainnet.coordinator.server import serve
run, state, port, sets, limits = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5])
serve(load_config(run, sets), Path(state), "127.0.0.1", port, ServerLimits(**limits), log_level="warning")
"""


class VerifyServer(ServerProc):
    """A real coordinator on 127.0.0.1 (server.serve in a subprocess) with config overrides and limits."""

    def __init__(self, run: Path, state: Path, port: int, sets: list[str] = (), limits: dict | None = None,
                 env: dict | None = None) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        e = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", **(env or {}))
        self.log = open(state.parent / f"server-{port}.log", "ab")
        lim = {"rate_per_s": 0.0, "tick_s": 0.2, **(limits or {})}
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, str(run), str(state), str(port),
                                      json.dumps(list(sets)), json.dumps(lim)], env=e, stdout=self.log,
                                     stderr=self.log)


class Node:
    """A worker built from the library: signs with its key, trains with run_task, encodes through
    ErrorFeedback with the ef_in / ef_out commitments, and can forge any of it."""

    def __init__(self, url: str, key_dir: Path) -> None:
        self.key = load_or_create_key(key_dir)
        self.client = CoordinatorClient(url, self.key, retry=RetryPolicy(budget_s=5.0))
        self.node_id = self.client.node_id
        self.http = httpx.Client(base_url=url, timeout=30.0)
        self.info = self.client.info()
        torch.manual_seed(0)
        self.model = build_model(ModelConfig.from_dict(self.info["model"]))
        self.ef = ErrorFeedback(self.info["codec"])

    def close(self) -> None:
        self.client.close()
        self.http.close()

    def register(self) -> dict[str, Any]:
        return self.client.register(info={"name": "test"})

    def lease(self) -> dict[str, Any]:
        reply = self.client.lease()
        assert reply.get("task"), reply
        return reply["task"]

    def train(self, task: dict[str, Any]) -> dict[str, torch.Tensor]:
        base = st_load(self.client.model(task["base_version"])[0])
        shard = self.client.shard(task["shard_id"])
        assert hashlib.sha256(shard).hexdigest() == task["shard_sha256"]
        tokens = torch.frombuffer(bytearray(shard), dtype=torch.uint8)
        return run_task(self.model, base, tokens, TaskHParams(**task["hparams"]), seed=task["seed"]).delta

    def encode(self, task: dict[str, Any], delta: dict[str, torch.Tensor],
               **extra: Any) -> tuple[bytes, dict, dict]:
        """Encode delta + residual with error feedback; `extra` overrides header fields (e.g. a forged ef_in)."""
        r_in = {k: v.clone() for k, v in self.ef.residuals.items()}
        encoded, _ = self.ef.compress(delta)
        r_out = {k: v.clone() for k, v in self.ef.residuals.items()}
        hp = task["hparams"]
        head = {"tokens": task["tokens"], "steps": hp["steps"], "loss": 1.0,
                "ef_in": residual_digest(r_in), "ef_out": residual_digest(r_out), **extra}
        body = encode_update(encoded, self.info["codec"], run_id=self.info["run_id"], node_id=self.node_id,
                             task_id=task["task_id"], base_version=task["base_version"], extra=head)
        return body, r_in, r_out

    def upload(self, task: dict[str, Any], body: bytes) -> dict[str, Any]:
        sig = sign_update(self.key, self.info["run_id"], self.node_id, task["task_id"], task["base_version"],
                          hashlib.sha256(body).hexdigest())
        return self.client.upload(body, sig)

    @staticmethod
    def reveal_body(r_in: dict, r_out: dict) -> bytes:
        t = {f"r_in/{k}": v.contiguous() for k, v in r_in.items()}
        return st_save(t | {f"r_out/{k}": v.contiguous() for k, v in r_out.items()})

    def reveal(self, task: dict[str, Any], r_in: dict, r_out: dict) -> dict[str, Any]:
        return self.client.reveal(task["task_id"], self.reveal_body(r_in, r_out))

    def post(self, path: str, body: bytes, headers: dict | None = None) -> httpx.Response:
        """A signed POST of any bytes (for malformed requests)."""
        h = sign_request(self.key, self.node_id, "POST", path, body, time.time())
        return self.http.post(path, content=body, headers={**h, **(headers or {})})


def status(url: str) -> dict[str, Any]:
    r = httpx.get(url + "/v1/status", timeout=10.0)
    r.raise_for_status()
    return r.json()


def node_row(st: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in st["node_table"] if n["node_id"] == node_id)


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
