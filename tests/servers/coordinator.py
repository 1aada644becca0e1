"""A real `trainnet coordinator` subprocess on loopback, and a minimal signed HTTP node to drive it.

    run = make_run(tmp_path, tokens=3200)                    # ~24 KB of stdlib text, a 1-layer model, q2
    srv = CoordinatorProc(run, tmp_path / "state", free_port()); srv.wait_ready()
    node = HttpNode(srv.url, tmp_path / "key0"); node.register()
    task, upload = node.lease(); body = node.train(task); node.upload(task, body)
    srv.operator_get("/v1/dashboard"); srv.kill(); srv.stop()

Only for what needs a socket or a process (kill -9, the browser, real RSS); the API's logic is tested
in-process (tests/server).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from trainnet.protocol import auth
from trainnet.protocol.wire import encode_update, header_sha256
from trainnet.verify.commit import EMPTY_DIGEST

SRC = str(Path(__file__).resolve().parents[2] / "src")
HONEST_FP32 = {"ef_in": EMPTY_DIGEST, "ef_out": EMPTY_DIGEST}  # an fp32 upload has no residual

RUN_TOML = """
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
codec = "{codec}"
"""


def make_run(tmp: Path, tokens: int = 3200, codec: str = "fp32") -> Path:
    """A data folder of ~24 KB of real text (stdlib sources) and a run.toml for a 1-layer model."""
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    src = Path(json.__file__).read_bytes() + Path(hashlib.__file__).read_bytes()
    (data / "text.txt").write_bytes(src[:24_000])
    run = tmp / "run.toml"
    run.write_text(RUN_TOML.format(data=data, tokens=tokens, codec=codec))
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CoordinatorProc:
    """`python -m trainnet.cli coordinator ...` as a subprocess, with a known operator token."""

    def __init__(self, run: Path, state: Path, port: int, extra: list[str] = (), env: dict | None = None) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.state = state
        self.token = secrets.token_urlsafe(12)
        e = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", **(env or {}))
        state.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = state.parent / f"coordinator-{port}.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainnet.cli", "coordinator", "--run", str(run), "--state", str(state),
             "--port", str(port), "--log-level", "warning", "--operator-token", self.token, *extra],
            env=e, stdout=self.log, stderr=self.log)

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(self.url + "/v1/info", timeout=1.0)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"coordinator did not start:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def operator_get(self, path: str) -> dict[str, Any]:
        r = httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=30.0)
        assert r.status_code == 200, r.text
        return r.json()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class HttpNode:
    """A minimal worker over HTTP: signed requests (protocol 2), training with run_task, direct uploads."""

    def __init__(self, url: str, key_dir: Path, join_token: str | None = None) -> None:
        self.http = httpx.Client(base_url=url, timeout=30.0)
        self.key = auth.load_or_create_key(key_dir)
        self.pub = auth.public_key_hex(self.key)
        self.node_id = auth.node_id_of(bytes.fromhex(self.pub))
        self.counter = auth.Counter()
        self.join_token = join_token
        self.info = self.http.get("/v1/info").json()
        self.run_id = self.info["run_id"]

    def post(self, path: str, body: bytes | dict, headers: dict | None = None, now: float | None = None,
             run_id: str | None = None) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        t = time.time() if now is None else now
        h = auth.sign_request(self.key, self.node_id, run_id or self.run_id, "POST", path, raw, t,
                              self.counter.next(time.time()))
        return self.http.post(path, content=raw, headers={**h, **(headers or {})})

    def register(self) -> httpx.Response:
        body: dict[str, Any] = {"public_key": self.pub, "info": {"device": "test"}}
        if self.join_token:
            body["join_token"] = self.join_token
        r = self.post("/v1/register", body)
        if r.status_code == 200:
            self.counter.bump(r.json()["min_counter"])
        return r

    def lease(self) -> dict[str, Any]:
        r = self.post("/v1/lease", {})
        assert r.status_code == 200, r.text
        return r.json()

    def base_params(self, version: int, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from trainnet.worker.client import CoordinatorClient
        from trainnet.worker.versions import VersionFetcher

        client = CoordinatorClient(str(self.http.base_url))
        try:
            return VersionFetcher(client, template, self.info["signer"]).get(version)
        finally:
            client.close()

    def train(self, task: dict[str, Any], extra: dict[str, Any] | None = None) -> bytes:
        """Run the task honestly and encode the update (fp32 runs: empty residual commitments)."""
        from trainnet.models import ModelConfig, build_model
        from trainnet.train.local import TaskHParams, params_of, run_task

        model = build_model(ModelConfig.from_dict(self.info["model"]), seed=0)
        base = self.base_params(task["base_version"], params_of(model))
        r = self.http.get(f"/v1/shard/{task['shard_id']}")
        assert r.status_code == 200, r.text
        shard = r.content
        assert hashlib.sha256(shard).hexdigest() == task["shard_sha256"]
        tokens = torch.frombuffer(bytearray(shard), dtype=torch.uint8)
        res = run_task(model, base, tokens, TaskHParams(**task["hparams"]), seed=task["seed"])
        return encode_update(res.delta, codec=task["codec"], run_id=self.run_id, node_id=self.node_id,
                             task_id=task["task_id"], base_version=task["base_version"],
                             extra={"tokens": res.tokens, "steps": res.steps, "loss": res.loss_mean,
                                    **HONEST_FP32, **(extra or {})})

    def upload(self, task: dict[str, Any], body: bytes) -> httpx.Response:
        sha = hashlib.sha256(body).hexdigest()
        sig = auth.sign_update(self.key, self.run_id, self.node_id, task["task_id"], task["base_version"], sha,
                               header_sha256(body))
        return self.post(f"/v1/update/{task['task_id']}", body,
                         headers={"X-TrainNet-Update-Signature": sig, "Content-Type": "application/octet-stream"})

    def close(self) -> None:
        self.http.close()
