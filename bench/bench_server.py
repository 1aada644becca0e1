"""Load test of the coordinator HTTP server: N concurrent simulated workers on loopback.

    PYTHONPATH=src python bench/bench_server.py --clients 8 32 64 --seconds 15 --out bench/results/server.md

Starts `python -m trainnet.cli coordinator` as a subprocess (a ~1M-parameter model, fp16 uploads,
quorum 4, durable SQLite + fsynced files), then for each concurrency level runs that many asyncio
clients (httpx) that loop lease -> upload a random update of the right shape (encoded with
encode_update and signed, no training) for a fixed time. Reports accepted updates/s, upload MB/s and
lease latency p50/p95 as measured on this machine; the clients share the CPU with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from simrunner import cpu_model  # bench/ is the script directory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from trainnet.models import ModelConfig, build_model  # noqa: E402
from trainnet.protocol.auth import (  # noqa: E402
    HDR_UPDATE_SIG,
    load_or_create_key,
    node_id_of,
    public_key_hex,
    sign_request,
    sign_update,
)
from trainnet.protocol.wire import encode_update  # noqa: E402

RUN = """
name = "bench"
[model]
n_layer = 5
n_head = 4
n_embd = 128
block_size = 64
[data]
max_bytes = 2_000_000
shard_bytes = 65536
val_every = 10
[consensus]
h = 5
quorum = 4
grace_s = 5.0
lease_s = 60.0
max_staleness = 1000
[sim]
tokens = 1_000_000_000
codec = "fp16"
"""


class Worker:
    def __init__(self, http: httpx.AsyncClient, key_dir: Path, info: dict, shapes: dict) -> None:
        self.http, self.info, self.shapes = http, info, shapes
        self.key = load_or_create_key(key_dir)
        self.pub = public_key_hex(self.key)
        self.node_id = node_id_of(bytes.fromhex(self.pub))
        self.gen = torch.Generator().manual_seed(int(self.node_id[1:9], 16))

    async def post(self, path: str, body: bytes, extra: dict | None = None) -> httpx.Response:
        h = sign_request(self.key, self.node_id, "POST", path, body, time.time())
        return await self.http.post(path, content=body, headers={**h, **(extra or {})})

    async def register(self) -> None:
        r = await self.post("/v1/register", json.dumps({"public_key": self.pub}).encode())
        r.raise_for_status()

    def make_update(self, task: dict) -> bytes:
        delta = {k: torch.randn(s, generator=self.gen) * 1e-3 for k, s in self.shapes.items()}
        return encode_update(delta, codec=self.info["codec"], run_id=self.info["run_id"], node_id=self.node_id,
                             task_id=task["task_id"], base_version=task["base_version"],
                             extra={"tokens": task["tokens"], "steps": task["hparams"]["steps"], "loss": 1.0})

    async def loop(self, until: float, stats: dict) -> None:
        while time.time() < until:
            t0 = time.perf_counter()
            r = await self.post("/v1/lease", b"{}")
            stats["lease_ms"].append((time.perf_counter() - t0) * 1e3)
            task = r.json().get("task") if r.status_code == 200 else None
            if task is None:
                await asyncio.sleep(0.05)
                continue
            body = await asyncio.to_thread(self.make_update, task)
            digest = hashlib.sha256(body).hexdigest()
            sig = sign_update(self.key, self.info["run_id"], self.node_id, task["task_id"], task["base_version"],
                              digest)
            r = await self.post("/v1/update", body, {HDR_UPDATE_SIG: sig})
            if r.status_code == 200 and r.json()["accepted"]:
                stats["accepted"] += 1
                stats["bytes"] += len(body)
            else:
                stats["rejected"].append(r.json().get("error"))


async def run_level(url: str, n: int, seconds: float, tmp: Path, info: dict, shapes: dict) -> dict:
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as http:
        workers = [Worker(http, tmp / f"k{n}_{i}", info, shapes) for i in range(n)]
        for w in workers:
            await w.register()
        stats = {"accepted": 0, "bytes": 0, "lease_ms": [], "rejected": []}
        t0 = time.time()
        await asyncio.gather(*(w.loop(t0 + seconds, stats) for w in workers))
        wall = time.time() - t0
        st = (await http.get("/v1/status")).json()
    lat = sorted(stats["lease_ms"])
    return {"clients": n, "wall_s": wall, "accepted": stats["accepted"], "upd_per_s": stats["accepted"] / wall,
            "mb_per_s": stats["bytes"] / wall / 1e6, "lease_p50_ms": statistics.median(lat),
            "lease_p95_ms": lat[int(0.95 * (len(lat) - 1))], "leases": len(lat),
            "rejected": len(stats["rejected"]), "version": st["model_version"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--port", type=int, default=8479)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "run.toml").write_text(RUN)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
        log = open(tmp / "server.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "trainnet.cli", "coordinator", "--run", str(tmp / "run.toml"),
                                 "--state", str(tmp / "state"), "--port", str(args.port), "--rate", "0",
                                 "--log-level", "warning"], env=env, stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{args.port}"
            for _ in range(300):
                try:
                    info = httpx.get(url + "/v1/info", timeout=1).json()
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            model = build_model(ModelConfig.from_dict(info["model"]))
            shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
            n_params = sum(p.numel() for p in model.parameters())
            results = [asyncio.run(run_level(url, n, args.seconds, tmp, info, shapes)) for n in args.clients]
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
    upload_mb = n_params * 2 / 1e6
    lines = [
        "# Coordinator server load test", "",
        f"Command: `PYTHONPATH=src python bench/bench_server.py --clients {' '.join(map(str, args.clients))} "
        f"--seconds {args.seconds:g}`", "",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical cores (shared with other work; clients and server "
        "run on the same cores). Python " + platform.python_version() + ", torch " + torch.__version__ + ".", "",
        f"Setup: model {n_params:,} parameters, codec {info['codec']} (~{upload_mb:.2f} MB per upload), "
        "quorum 4 (one outer step + fsynced checkpoint and momentum files every 4 updates), SQLite WAL "
        "synchronous=FULL, every accepted update fsynced before its 200. Clients upload random updates "
        "of the right shapes (no training), each encoded with encode_update and signed per task.", "",
        "| clients | accepted updates/s | upload MB/s | lease p50 ms | lease p95 ms | leases | rejected | "
        "versions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['clients']} | {r['upd_per_s']:.1f} | {r['mb_per_s']:.1f} | {r['lease_p50_ms']:.1f} | "
                     f"{r['lease_p95_ms']:.1f} | {r['leases']} | {r['rejected']} | {r['version']} |")
    lines += ["", "All figures measured by this script in one run (wall-clock over the timed window)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
