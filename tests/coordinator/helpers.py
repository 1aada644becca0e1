"""Test helpers: a tiny run config, a coordinator subprocess on loopback, and a minimal signed client."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import load as st_load

from trainnet.models import ModelConfig, build_model
from trainnet.protocol.auth import (
    HDR_UPDATE_SIG,
    load_or_create_key,
    node_id_of,
    public_key_hex,
    sign_request,
    sign_update,
)
from trainnet.protocol.wire import encode_update
from trainnet.train.local import TaskHParams, run_task
from trainnet.verify import EMPTY_DIGEST

# An fp32 upload has no error-feedback residual: an honest worker commits to the empty residual.
HONEST_FP32_COMMITMENTS = {"ef_in": EMPTY_DIGEST, "ef_out": EMPTY_DIGEST}

SRC = str(Path(__file__).resolve().parents[2] / "src")

TINY_TOML = """
name = "tiny"
[model]
n_layer = 1
n_head = 2
n_embd = 32
block_size = 32
[data]
path = "{data}"
shard_bytes = 4096
val_every = 4
[inner]
batch_size = 2
[consensus]
h = 5
quorum = 2
grace_s = 30.0
lease_s = 60.0
max_staleness = 8
[sim]
tokens = {tokens}
codec = "fp32"
"""


def make_run(tmp: Path, tokens: int = 3200) -> Path:
    """A data folder of ~24 KB of real text (stdlib sources) and a run.toml for a 1-layer model."""
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    src = Path(json.__file__).read_bytes() + Path(hashlib.__file__).read_bytes()
    (data / "text.txt").write_bytes(src[:24_000])
    run = tmp / "run.toml"
    run.write_text(TINY_TOML.format(data=data, tokens=tokens))
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    """`python -m trainnet.cli coordinator ...` as a subprocess; stop() or kill() it."""

    def __init__(self, run: Path, state: Path, port: int, extra: list[str] = (), env: dict | None = None,
                 log: Path | None = None) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        e = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", **(env or {}))
        self.log = open(log or state.parent / f"server-{port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainnet.cli", "coordinator", "--run", str(run), "--state", str(state),
             "--port", str(port), "--log-level", "warning", *extra], env=e, stdout=self.log, stderr=self.log)

    def wait_ready(self, timeout: float = 30.0) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/v1/info", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("coordinator did not start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class Client:
    """A minimal worker: signs requests, leases, trains with run_task, uploads encode_update bytes."""

    def __init__(self, url: str, key_dir: Path, join_token: str | None = None) -> None:
        self.http = httpx.Client(base_url=url, timeout=30.0)
        self.key = load_or_create_key(key_dir)
        self.pub = public_key_hex(self.key)
        self.node_id = node_id_of(bytes.fromhex(self.pub))
        self.join_token = join_token
        self.info = self.http.get("/v1/info").json()
        self.model = build_model(ModelConfig.from_dict(self.info["model"]))

    def post(self, path: str, body: bytes | dict, headers: dict | None = None, now: float | None = None,
             node_id: str | None = None) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = sign_request(self.key, node_id or self.node_id, "POST", path, raw, time.time() if now is None else now)
        return self.http.post(path, content=raw, headers={**h, **(headers or {})})

    def register(self) -> httpx.Response:
        body: dict[str, Any] = {"public_key": self.pub, "info": {"name": "test"}}
        if self.join_token:
            body["join_token"] = self.join_token
        return self.post("/v1/register", body)

    def lease(self) -> dict:
        r = self.post("/v1/lease", {})
        assert r.status_code == 200, r.text
        return r.json()

    def base_params(self, version: int) -> dict[str, torch.Tensor]:
        r = self.http.get(f"/v1/model/{version}")
        assert r.status_code == 200, r.text
        return st_load(r.content)

    def train(self, task: dict) -> bytes:
        """Run the task and return the encoded update (not yet uploaded)."""
        base = self.base_params(task["base_version"])
        shard = self.http.get(f"/v1/shard/{task['shard_id']}").content
        assert hashlib.sha256(shard).hexdigest() == task["shard_sha256"]
        tokens = torch.frombuffer(bytearray(shard), dtype=torch.uint8)
        res = run_task(self.model, base, tokens, TaskHParams(**task["hparams"]), seed=task["seed"])
        return encode_update(res.delta, codec=self.info["codec"], run_id=self.info["run_id"],
                             node_id=self.node_id, task_id=task["task_id"], base_version=task["base_version"],
                             extra={"tokens": res.tokens, "steps": res.steps, "loss": res.loss_mean,
                                    **HONEST_FP32_COMMITMENTS})

    def upload(self, task: dict, payload: bytes, sig_task: dict | None = None) -> httpx.Response:
        t = sig_task or task
        digest = hashlib.sha256(payload).hexdigest()
        usig = sign_update(self.key, self.info["run_id"], self.node_id, t["task_id"], t["base_version"], digest)
        return self.post("/v1/update", payload, headers={HDR_UPDATE_SIG: usig,
                                                         "Content-Type": "application/octet-stream"})

    def close(self) -> None:
        self.http.close()
