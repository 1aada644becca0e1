"""Protocol attacks against a real `trainnet coordinator` subprocess on loopback (issue 10), with the
coordinator's RSS from /proc, what each attack left in the state store and on disk, and whether honest nodes
and the coordinator came through; plus the "one hostile update moves no weight beyond the norm bound"
measurement through the real data plane. Writes bench/results/security_protocol.md.

    PYTHONPATH=src python bench/bench_protocol_attacks.py                  # ~5 minutes on 2 CPU cores
    PYTHONPATH=src python bench/bench_protocol_attacks.py --out /tmp/x.md --slowloris-s 12

Every coordinator runs with its shipped defaults (robust rule, verification with probation, header deadline
10 s, 512 connections, 30 new identities per address per minute) except: a tiny model (21,600 parameters),
`--rate 0` (the bench's own nodes send bursts), and, for the withheld-reveal row, reveals due after 4 s.
RSS: VmRSS before and after, and the peak (VmHWM, reset through /proc/PID/clear_refs before each attack).
"Stored": rows added to the update/audit/version logs and to the buffer/lease/audit tables of the state
store (refusal counters and events excluded), and files added under the blob store or anywhere else in the
bench's directory. Verdict "refused cheaply": the expected status, peak RSS growth under 64 MB, nothing
stored, the coordinator answering afterwards.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trainnet.aggregate.publish import Reconstructor
from trainnet.codec.base import DTYPE_NAMES
from trainnet.codec.spec import parse_codec
from trainnet.config import load_config
from trainnet.protocol import auth
from trainnet.protocol.messages import TaskSpec
from trainnet.protocol.wire import FORMAT_VERSION, HASH_BLOCK, MAGIC, PREFIX, block_hashes, header_sha256
from trainnet.server.runspec import RunSpec, build_model
from trainnet.train.local import TaskHParams, run_task
from trainnet.verify.commit import CommittingUploader
from trainnet.worker.procs import child_env, free_port, write_toml
from trainnet.worker.reveal import reveal_body

MIB = 1 << 20
RSS_LIMIT_MB = 64.0
TOKEN = "bench-operator-token"
ESCAPE = "../../escape/pwned"


def run_toml(path: Path, name: str, quorum: int = 2, rule: str = "robust", reveal_s: float = 0.0) -> Path:
    return write_toml(path, {
        "name": name, "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
        "data": {"shard_bytes": 32768, "val_every": 8, "max_bytes": 1_048_576},
        "inner": {"batch_size": 4},
        "consensus": {"h": 5, "quorum": quorum, "grace_s": 3600.0, "lease_s": 600.0, "aggregator": rule,
                      "reveal_s": reveal_s, "max_leases_per_node": 4},
        "sim": {"tokens": 5_000_000, "codec": "q2", "seed": 0}})


# ---------------------------------------------------------------------------------------------- the process
class Coordinator:
    def __init__(self, root: Path, toml: Path, extra: list[str] = ()) -> None:
        self.root, self.toml, self.extra = root, toml, list(extra)
        self.run_id = load_config(str(toml)).name
        self.state = root / "state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(timeout=30.0)

    def start(self) -> Coordinator:
        log = open(self.root / "coordinator.log", "ab")  # noqa: SIM115  (kept open for the child)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainnet.cli", "coordinator", "--run", str(self.toml), "--state", str(self.state),
             "--port", str(self.port), "--operator-token", TOKEN, "--log-level", "warning", "--rate", "0",
             "--eval-interval", "3600", *self.extra], stdout=log, stderr=subprocess.STDOUT, env=child_env())
        end = time.monotonic() + 120
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordinator exited:\n{self.log_tail()}")
            try:
                if self.get("/v1/info").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"coordinator not ready:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, n: int = 20) -> str:
        return "\n".join((self.root / "coordinator.log").read_text(errors="replace").splitlines()[-n:])

    def proc_status(self, field: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def reset_peak(self) -> None:
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            pass

    def get(self, path: str, **kw: Any) -> httpx.Response:
        """A GET as a worker makes it: unsigned reads are rate-limited per address, so 429 waits Retry-After."""
        for _ in range(30):
            r = self.http.get(self.url + path, **kw)
            if r.status_code != 429:
                return r
            time.sleep(float(r.headers.get("Retry-After", "1")))
        return r

    def up(self) -> bool:
        try:
            return self.proc.poll() is None and self.get("/v1/info").status_code == 200
        except httpx.TransportError:
            return False

    def status(self) -> dict[str, Any]:
        return self.get("/v1/operator/status", headers={"Authorization": f"Bearer {TOKEN}"}).json()

    def public(self) -> dict[str, Any]:
        return self.get("/v1/status").json()

    def rows(self) -> dict[str, int]:
        """Rows that hold something a request stored (refusal counters and the event log excluded)."""
        con = sqlite3.connect(f"file:{self.state / 'coordinator.db'}?mode=ro", uri=True, timeout=30)
        try:
            out = dict(con.execute("SELECT 'doc:' || coll, COUNT(*) FROM docs WHERE coll IN "
                                   "('buffer', 'leases', 'audits', 'nodes') GROUP BY coll").fetchall())
            out |= dict(con.execute("SELECT 'log:' || kind, COUNT(*) FROM logs GROUP BY kind").fetchall())
        finally:
            con.close()
        return out

    def files(self) -> dict[str, int]:
        return {str(p.relative_to(self.root.parent)): p.stat().st_size for p in self.root.parent.rglob("*")
                if p.is_file() and "coordinator.db" not in p.name and p.suffix != ".log"}


# ---------------------------------------------------------------------------------------------- a node
class Node:
    def __init__(self, c: Coordinator, seed: int) -> None:
        self.c = c
        self.key = Ed25519PrivateKey.from_private_bytes(random.Random(seed).getrandbits(256).to_bytes(32, "little"))
        self.pub = auth.public_key_hex(self.key)
        self.node_id = auth.node_id_of(bytes.fromhex(self.pub))
        self.counter = auth.Counter()
        self.up = None  # CommittingUploader, per node

    def sign(self, method: str, path: str, body: bytes, run_id: str | None = None, key: Any = None) -> dict[str, str]:
        return auth.sign_request(key or self.key, self.node_id, run_id or self.c.run_id, method, path, body,
                                 time.time(), self.counter.next(time.time()))

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        return self.c.http.post(self.c.url + path, content=body, headers=headers or self.sign("POST", path, body),
                                **kw)

    def register(self, key: Any = None) -> httpx.Response:
        body = json.dumps({"public_key": self.pub, "info": {"device": "bench"}}).encode()
        r = self.post("/v1/register", body, self.sign("POST", "/v1/register", body, key=key))
        if r.status_code == 200:
            self.counter.bump(r.json()["min_counter"])
        return r

    def lease(self) -> dict[str, Any]:
        """A task, waiting as a worker does while the run is starting (version 0 not yet published)."""
        for _ in range(120):
            r = self.post("/v1/lease", b"{}")
            assert r.status_code == 200, r.text
            if r.json()["task"]:
                return r.json()["task"]
            time.sleep(min(1.0, r.json().get("retry_after_s") or 1.0))
        raise AssertionError(f"no task: {r.text}")

    def upload(self, task: dict[str, Any], body: bytes, sig: str | None = None, headers: dict | None = None,
               base: int | None = None) -> httpx.Response:
        path = f"/v1/update/{task['task_id']}"
        if sig is None:
            sig = auth.sign_update(self.key, self.c.run_id, self.node_id, task["task_id"],
                                   task["base_version"] if base is None else base, hashlib.sha256(body).hexdigest(),
                                   header_sha256(body))
        hdrs = (headers or self.sign("POST", path, body)) | {auth.HDR_UPDATE_SIG: sig,
                                                            "Content-Type": "application/octet-stream"}
        return self.c.http.post(self.c.url + path, content=body, headers=hdrs)


class Trainer:
    """Honest work for a run: the published base rebuilt over HTTP (signed manifests, sha256 per blob) and
    run_task on the task's shard, as a worker does it."""

    def __init__(self, toml: Path) -> None:
        self.spec = RunSpec.load(load_config(str(toml)))
        self.model = build_model(self.spec.cfg, seed=0)
        self.bases: dict[tuple[str, int], torch.Tensor] = {}

    def base(self, c: Coordinator, v: int) -> dict[str, torch.Tensor]:
        if (c.url, v) not in self.bases:
            docs = {}

            def manifest(u: int) -> dict[str, Any]:
                if u not in docs:
                    docs[u] = c.get(f"/v1/version/{u}").json()["manifest"]
                return docs[u]
            r = Reconstructor(manifest, lambda key: c.get(f"/v1/blob/{key}").content,
                              self.spec.layout.numel)
            self.bases[(c.url, v)] = r.get(v)
        return self.spec.layout.unflatten(self.bases[(c.url, v)])

    def delta(self, c: Coordinator, task: dict[str, Any]) -> dict[str, torch.Tensor]:
        t = TaskSpec(**task)
        shard = self.spec.corpus.shard(t.shard_id, expect_sha256=t.shard_sha256)
        return run_task(self.model, self.base(c, t.base_version), shard.tokens, TaskHParams(**t.hparams),
                        seed=t.seed).delta

    def encode(self, n: Node, task: dict[str, Any], delta: dict[str, torch.Tensor], keep: bool = True,
               header_node: str | None = None) -> tuple[bytes, bytes]:
        up = (n.up or CommittingUploader(self.spec.ccfg.codec)) if keep else CommittingUploader(self.spec.ccfg.codec)
        if keep:
            n.up = up
        data = up.encode(delta, TaskSpec(**task), header_node or n.node_id)
        return data, reveal_body(*up.last_residuals)

    def honest(self, c: Coordinator, n: Node, reveal: bool = True) -> httpx.Response:
        task = n.lease()
        data, residuals = self.encode(n, task, self.delta(c, task))
        r = n.upload(task, data)
        if r.status_code == 200 and reveal and r.json().get("audit", {}).get("reveal"):
            path = f"/v1/audit/{task['task_id']}/residuals"
            rr = n.post(path, residuals)
            assert rr.status_code == 200, rr.text
        return r


def craft(codec: str, tensors: list[tuple[str, list[int]]], **head: Any) -> bytes:
    """A well-formed message whose header claims any shapes (zero payload of the declared size)."""
    c = parse_codec(codec)
    entries, cursor = [], 0
    for name, shape in tensors:
        numel = int(np.prod(shape))
        parts = []
        for p in c.layout(numel):
            parts.append({"name": p.name, "dtype": DTYPE_NAMES[p.dtype], "offset": cursor, "length": p.nbytes,
                          "sha256": block_hashes(bytes(p.nbytes))})
            cursor += p.nbytes
        entries.append({"name": name, "shape": shape, "dtype": "float32", "numel": numel, "parts": parts})
    payload = bytes(cursor)
    header = {"format": FORMAT_VERSION, "hash_block": HASH_BLOCK, "codec": c.spec, "tensors": entries,
              "payload_bytes": cursor, "payload_sha256": hashlib.sha256(payload).hexdigest(), **head}
    hb = json.dumps(header).encode()
    return PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(hb)) + hb + payload


# ---------------------------------------------------------------------------------------------- measuring
ROWS: list[dict[str, Any]] = []


def settle(c: Coordinator, timeout: float = 60.0) -> None:
    """Wait until no merge, buffered update or audit is in flight (the verifier's work is not an attack's)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = c.public()
        if not st["merging"] and not st["audits_pending"]:
            return
        time.sleep(0.3)


def attack(c: Coordinator, name: str, expect: str, fn: Callable[[], str], stored_ok: Callable[[dict], bool]
           | None = None, judge: Callable[[str], bool] | None = None, ok_label: str = "refused cheaply",
           rss_check: bool = True) -> dict[str, Any]:
    """Run one attack; `fn` returns what the coordinator answered (e.g. '401 bad_signature x8')."""
    settle(c)
    rows0, files0 = c.rows(), c.files()
    c.reset_peak()
    rss0 = c.proc_status("VmRSS")
    t0 = time.perf_counter()
    try:
        got = fn()
    except Exception as exc:  # an attack that could not even be run is a result too
        got = f"bench error: {type(exc).__name__}: {exc}"[:200]
    dt = time.perf_counter() - t0
    rss1, peak = c.proc_status("VmRSS"), c.proc_status("VmHWM")
    rows1, files1 = c.rows(), c.files()
    added_rows = {k: rows1.get(k, 0) - rows0.get(k, 0) for k in set(rows0) | set(rows1)
                  if rows1.get(k, 0) != rows0.get(k, 0)}
    added_files = sorted(set(files1) - set(files0))
    up = c.up()
    stored = {"rows": added_rows, "files": added_files}
    nothing = not added_files and not added_rows if stored_ok is None else stored_ok(stored)
    ok = (judge(got) if judge else expect in got) and (not rss_check or (peak - rss0) < RSS_LIMIT_MB) \
        and nothing and up
    row = {"attack": name, "expect": expect, "got": got, "rss0": rss0, "rss1": rss1, "peak": peak, "s": dt,
           "stored": stored, "up": up, "verdict": ok_label if ok else "CHECK"}
    ROWS.append(row)
    print(f"{name}: {got} | rss {rss0:.0f}->{rss1:.0f} (peak {peak:.0f}) MB | stored {stored} | up {up} | "
          f"{row['verdict']} ({dt:.1f}s)", flush=True)
    if "server_error" in got:  # an unexpected exception in the coordinator: show why
        print(c.log_tail(40), flush=True)
    return row


def codes(rs: list[httpx.Response]) -> str:
    out: dict[str, int] = {}
    for r in rs:
        try:
            key = f"{r.status_code} {r.json().get('error', '')}".strip()
        except ValueError:
            key = str(r.status_code)
        out[key] = out.get(key, 0) + 1
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(out.items()))


def raw_status(reply: bytes) -> str:
    line = reply.split(b"\r\n")[0].decode(errors="replace")
    return " ".join(line.split(" ")[1:2]) if line.startswith("HTTP/") else ("closed" if not reply else line[:20])


def read_reply(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                n = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                          if ln.lower().startswith(b"content-length:")), 0)
                if len(body) >= n:
                    break
    except OSError:
        pass
    return data


# ---------------------------------------------------------------------------------------------- the attacks
def protocol_attacks(c: Coordinator, tr: Trainer, slowloris_s: float) -> None:
    honest = [Node(c, 100 + i) for i in range(2)]
    for n in honest:
        assert n.register().status_code == 200
    for n in honest:  # warm up: one merge and the built-in verifier's first recomputation happen before
        tr.honest(c, n)
    mallory = Node(c, 7)
    assert mallory.register().status_code == 200
    task = mallory.lease()
    delta = tr.delta(c, task)
    names = tr.spec.layout.names

    def hostile(**lie: Any) -> bytes:
        return tr.encode(mallory, task | lie, delta, keep=False)[0]

    def upload_of(body: bytes, **kw: Any) -> Callable[[], str]:
        return lambda: codes([mallory.upload(task, body, **kw)])

    attack(c, "update header task_id = '../../escape/pwned'", "422 bad_payload", upload_of(hostile(task_id=ESCAPE)))
    attack(c, "update header node_id = '../../escape/pwned'", "422 bad_payload",
           upload_of(tr.encode(mallory, task, delta, keep=False, header_node=ESCAPE)[0]))
    attack(c, "update path task id '..%2F..%2Fescape%2Fpwned'", "404",
           lambda: codes([c.http.post(c.url + "/v1/update/..%2F..%2Fescape%2Fpwned", content=b"x")]))
    big = craft("topk:0.000001", [(names[0], [1 << 28])], run_id=c.run_id, node_id=mallory.node_id,
                task_id=task["task_id"], base_version=0, extra={"tokens": task["tokens"], "steps": 5})
    attack(c, f"topk:0.000001 over 2^28 elements ({len(big) / 1e6:.2f} MB), with Content-Length", "413",
           upload_of(big))

    def chunked() -> str:
        path = f"/v1/update/{task['task_id']}"
        sig = auth.sign_update(mallory.key, c.run_id, mallory.node_id, task["task_id"], 0,
                               hashlib.sha256(big).hexdigest(), header_sha256(big))
        hdrs = mallory.sign("POST", path, big) | {auth.HDR_UPDATE_SIG: sig}
        return codes([c.http.post(c.url + path, content=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                                  headers=hdrs)])
    attack(c, "the same, chunked (no Content-Length)", "413", chunked)
    attack(c, "wrong codec (topk:0.01+q4 for a q2 task)", "422 bad_payload", upload_of(hostile(codec="topk:0.01+q4")))
    attack(c, "wrong base version (5, signed as such)", "409 base_version_mismatch",
           upload_of(hostile(base_version=5), base=5))
    attack(c, "wrong run id in the update header", "422 bad_payload", upload_of(hostile(run_id="another-run")))
    attack(c, "lying token count (x100)", "422 token_count_mismatch", upload_of(hostile(tokens=task["tokens"] * 100)))
    body = hostile()
    forged = auth.sign_update(Node(c, 8).key, c.run_id, mallory.node_id, task["task_id"], 0,
                              hashlib.sha256(body).hexdigest(), header_sha256(body))
    attack(c, "bad update signature (another key)", "401 bad_signature", upload_of(body, sig=forged))
    other = body[:-1] + bytes([body[-1] ^ 1])
    attack(c, "body does not hash to the signed X-TrainNet-Body-SHA256", "400 body_mismatch",
           upload_of(body, headers=mallory.sign("POST", f"/v1/update/{task['task_id']}", other)))
    attack(c, "node id header '../../escape/pwned'", "404 unknown_node",
           lambda: codes([mallory.post("/v1/lease", b"{}", mallory.sign("POST", "/v1/lease", b"{}")
                                       | {auth.HDR_NODE: ESCAPE})]))
    attack(c, "heartbeat for task '../../escape/pwned'", "409 unknown_task",
           lambda: codes([mallory.post("/v1/heartbeat", json.dumps({"task_id": ESCAPE}).encode())]))
    attack(c, "verifier endpoint (/v1/audit/claim) by a non-verifier", "403 not_verifier",
           lambda: codes([mallory.post("/v1/audit/claim", b"{}")]))
    victim = Node(c, 9)
    attack(c, "registration self-signed by another key", "401 bad_signature",
           lambda: codes([victim.register(key=mallory.key)]))

    # replay: a captured signed /v1/lease, within the 300 s window, and one signed for another run
    n = honest[0]
    captured = n.sign("POST", "/v1/lease", b"{}")
    first = c.http.post(c.url + "/v1/lease", content=b"{}", headers=captured)
    assert first.status_code == 200 and first.json()["task"], first.text
    n.post("/v1/abandon", json.dumps({"task_id": first.json()["task"]["task_id"]}).encode())
    attack(c, "captured signed /v1/lease replayed (within 300 s)", "401 replay",
           lambda: codes([c.http.post(c.url + "/v1/lease", content=b"{}", headers=captured)]))
    attack(c, "signed /v1/lease for another run", "401 bad_signature",
           lambda: codes([n.post("/v1/lease", b"{}", n.sign("POST", "/v1/lease", b"{}", run_id="another-run"))]))

    # reveal larger than the model-derived cap, into a real pending audit
    n = Node(c, 11)  # a fresh node: its first update is audited (probation)
    assert n.register().status_code == 200
    reveal_task = n.lease()
    data, _ = tr.encode(n, reveal_task, tr.delta(c, reveal_task))
    assert n.upload(reveal_task, data).json()["audit"]["reveal"]
    cap = c.get("/v1/info").json()["limits"]["reveal_max_bytes"]
    path = f"/v1/audit/{reveal_task['task_id']}/residuals"
    attack(c, f"reveal of cap+1 bytes (cap {cap:,} B from the model)", "413 payload_too_large",
           lambda: codes([n.post(path, bytes(cap + 1))]))
    n.post(path, reveal_body(*n.up.last_residuals))

    # 8 concurrent unauthenticated 60 MiB POSTs
    def flood() -> str:
        replies: list[bytes] = []

        def one(i: int) -> None:
            s = socket.create_connection(("127.0.0.1", c.port), timeout=5)
            target = [b"/v1/lease", b"/v1/update/t0000000", b"/v1/audit/t0000000/residuals", b"/v1/heartbeat"][i % 4]
            s.sendall(b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(60 * MIB).encode()
                      + b"\r\n\r\n")
            s.settimeout(0.5)
            got = b""
            for _ in range(60):
                try:
                    s.sendall(bytes(MIB))
                    got = s.recv(4096)
                    if got:
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            replies.append(got or read_reply(s, 5.0))
            s.close()
        ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        out: dict[str, int] = {}
        for r in replies:
            out[raw_status(r)] = out.get(raw_status(r), 0) + 1
        return ", ".join(f"{k} x{v}" for k, v in sorted(out.items()))
    attack(c, "8 concurrent unauthenticated 60 MiB POSTs", "401 x8", flood)

    attack(c, "request head of 64 KiB (one segment)", "431",
           lambda: raw_status(send_raw(c, b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")))

    def slowloris() -> str:
        socks = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", c.port), timeout=5)
            s.sendall(b"POST /v1/lease HTTP/1.1\r\nHost: x\r\nX-a: ")
            s.setblocking(False)
            socks.append(s)
        t0, marks, open_at = time.monotonic(), {}, {}
        served_during = None
        while time.monotonic() - t0 < slowloris_s:
            time.sleep(1.0)
            for s in socks:
                try:
                    s.send(b"a")
                except OSError:
                    pass
            alive = 0
            for s in socks:
                try:
                    if s.recv(1) == b"":
                        continue
                    alive += 1
                except BlockingIOError:
                    alive += 1
                except OSError:
                    continue
            el = round(time.monotonic() - t0)
            open_at[el] = alive
            if served_during is None and el >= 3:
                served_during = c.up()
            for mark in (5, 12, int(slowloris_s)):
                if el >= mark and mark not in marks:
                    marks[mark] = alive
        for s in socks:
            s.close()
        return ("open after " + ", ".join(f"{k}s: {v}" for k, v in sorted(marks.items()))
                + f"; /v1/info served meanwhile: {served_during}")
    attack(c, f"200 slowloris sockets for {slowloris_s:.0f} s", "all closed by 12 s", slowloris,
           judge=lambda got: "12s: 0" in got and "meanwhile: True" in got)

    def cap_flood() -> str:
        socks = [socket.create_connection(("127.0.0.1", c.port), timeout=5) for _ in range(600)]
        for s in socks:
            s.setblocking(False)
        gone: set[int] = set()
        t0, last = time.monotonic(), (0, time.monotonic())
        while time.monotonic() - t0 < 8.0:  # until the server has accepted them all (before the 10 s deadline)
            for i, s in enumerate(socks):
                if i in gone:
                    continue
                try:
                    if s.recv(1) == b"":
                        gone.add(i)
                except BlockingIOError:
                    pass
                except OSError:
                    gone.add(i)
            if len(gone) != last[0]:
                last = (len(gone), time.monotonic())
            elif len(gone) >= 600 - 256 and time.monotonic() - last[1] > 1.0:
                break
            time.sleep(0.1)
        closed = len(gone)
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=5) as other:
            try:
                during = other.get(c.url + "/v1/info").status_code
            except httpx.TransportError:
                during = "refused"
        for s in socks:
            s.close()
        return f"{closed} of 600 closed at once; a client from 127.0.0.2 meanwhile: {during}"
    # (the bench's own keep-alive connection from 127.0.0.1 counts too: 344 or 345 are closed)
    attack(c, "600 idle connections from one address (caps: 256 per address, 512 in all)", "344 of 600", cap_flood,
           judge=lambda got: int(got.split()[0]) >= 600 - 256 and got.endswith(": 200"))

    made = [0, 0.0]

    def sybil() -> str:
        t0 = time.monotonic()
        rs = [Node(c, 10_000 + i).register() for i in range(2000)]
        made[:] = [sum(1 for r in rs if r.status_code == 200), time.monotonic() - t0]
        return codes(rs) + f" in {made[1]:.1f} s"
    # the budget: a burst of 30 identities, then 30 a minute
    attack(c, "2,000 new identities from one address, no join token", "429 rate_limited", sybil,
           stored_ok=lambda st: st["rows"] == {"doc:nodes": made[0]} and made[0] <= 30 + made[1] / 2 + 1
           and not st["files"], ok_label="capped at 30 + 30/min")

    def public_views() -> str:
        text = c.get("/v1/status").text + c.get("/metrics").text
        ids = [x.node_id for x in honest + [mallory]]
        shown = sum(1 for i in ids if i in text)
        op = c.get("/v1/operator/status").status_code
        return f"node ids in /v1/status + /metrics: {shown} of {len(ids)}; operator view without token: {op}"
    attack(c, "GET /v1/status and /metrics unauthenticated", "ids: 0 of", public_views,
           judge=lambda got: "metrics: 0 of" in got and "token: 401" in got)

    # honest nodes unaffected: they lease, train, upload (and reveal) after all of the above
    rs = [tr.honest(c, x) for x in honest]
    ROWS.append({"attack": "honest nodes after all the attacks above (lease, train, upload, reveal)",
                 "got": codes(rs), "summary": True, "verdict": "unaffected" if codes(rs) == "200 x2" else "CHECK"})


def send_raw(c: Coordinator, data: bytes) -> bytes:
    s = socket.create_connection(("127.0.0.1", c.port), timeout=5)
    try:
        s.sendall(data)
    except OSError:
        pass
    reply = read_reply(s, 5.0)
    s.close()
    return reply


def withheld_reveal(root: Path) -> None:
    toml = run_toml(root / "run.toml", "withheld", reveal_s=4.0)
    c = Coordinator(root, toml).start()
    try:
        tr = Trainer(toml)
        cheat, ok = Node(c, 21), Node(c, 22)
        for x in (cheat, ok):
            x.register()

        def run() -> str:
            r = tr.honest(c, cheat, reveal=False)
            tr.honest(c, ok, reveal=True)
            assert r.json()["audit"]["reveal"]
            end = time.monotonic() + 30
            while time.monotonic() < end:
                nodes = {n["node_id"]: n for n in c.status()["node_table"]}
                if nodes[cheat.node_id]["banned"]:
                    break
                time.sleep(0.5)
            cn, on = nodes[cheat.node_id], nodes[ok.node_id]
            ev = (cn.get("evidence") or [{}])[-1].get("reason")
            lease = cheat.post("/v1/lease", b"{}").json().get("reason")
            return f"banned {cn['banned']} (evidence {ev}); its next lease: {lease}; honest banned {on['banned']}"
        attack(c, "withheld reveal (due after 4 s; its update was accepted and merged before)", "banned True", run,
               stored_ok=lambda st: True, ok_label="banned", rss_check=False)
    finally:
        c.stop()


def corruption(root: Path, what: str) -> None:
    """Damage a file of a stopped coordinator, restart it, and see whether the run goes on."""
    toml = run_toml(root / "run.toml", "corrupt-" + what.split()[0])
    tr = Trainer(toml)
    c = Coordinator(root, toml).start()
    nodes = [Node(c, 31), Node(c, 32)]
    for n in nodes:
        n.register()
    if what == "pending update":
        tr.honest(c, nodes[0])  # buffered (quorum 2)
    else:
        for n in nodes:
            tr.honest(c, n)
        end = time.monotonic() + 60
        while c.public()["model_version"] < 1 and time.monotonic() < end:
            time.sleep(0.2)
    c.stop()
    blobs = c.state / "blobs"
    target = {"pending update": next((blobs / "updates").glob("*.tnup")),
              "latest published delta": blobs / "pub" / "v00000001" / "delta-r000.tnup",
              "aggregator state (theta)": blobs / "agg" / "r000" / "v00000001.theta"}[what]
    data = bytearray(target.read_bytes())
    how = "flipped byte" if what.startswith("aggregator") else "truncated"
    if how == "truncated":
        target.write_bytes(bytes(data[:len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x40
        target.write_bytes(bytes(data))
    t0 = time.perf_counter()
    c.start()
    restart_s = time.perf_counter() - t0
    v0 = c.public()["model_version"]

    def run() -> str:
        tr.bases.clear()
        end = time.monotonic() + 60
        while time.monotonic() < end:  # the published version a worker can rebuild
            st = c.public()
            if st["model_version"] >= v0 and not st["merging"]:
                try:
                    tr.base(c, st["model_version"])
                    break
                except Exception:
                    tr.bases.clear()
            time.sleep(0.5)
        rs = [tr.honest(c, n) for n in (nodes[1:] if what == "pending update" else nodes)]
        end = time.monotonic() + 60
        while time.monotonic() < end:
            st = c.status()
            if st["model_version"] > v0 and not st["merging"] and not st["buffered"]:
                break
            time.sleep(0.3)
        ev = [e for n in st["node_table"] for e in (n.get("evidence") or [])]
        kinds = {e["kind"] for e in c.get("/v1/dashboard", headers={"Authorization": f"Bearer {TOKEN}"}).json()["events"]}
        extra = "; republished" if "version_republished" in kinds else ""
        return (f"restart {restart_s:.1f}s; uploads {codes(rs)}; version {v0} -> {st['model_version']}; dropped "
                f"{st['updates_dropped']} (evidence: {','.join(sorted({e.get('reason', '?') for e in ev})) or '-'})"
                + extra)
    attack(c, f"{how} {what}, then restart", "restart", run, stored_ok=lambda st: True, rss_check=False)
    row = ROWS[-1]
    ok = c.up() and ("-> " + str(v0)) not in row["got"]
    if what == "aggregator state (theta)":
        ok = ok and detected_recovery(c)
        row["got"] += "; aggregator: corruption detected, fell back" if ok else "; NOT detected"
    row["verdict"] = "run goes on" if ok else "CHECK"
    c.stop()


def detected_recovery(c: Coordinator) -> bool:
    con = sqlite3.connect(f"file:{c.state / 'coordinator.db'}?mode=ro", uri=True)
    try:
        results = [json.loads(r[0]) for r in con.execute("SELECT result FROM merge_tasks WHERE result IS NOT NULL")]
    finally:
        con.close()
    return any(r.get("recovered") for r in results)


def full_disk(root: Path) -> None:
    """RLIMIT_FSIZE on the running coordinator (prlimit): every write past the current file sizes fails, like
    a full disk; then the limit is lifted again."""
    toml = run_toml(root / "run.toml", "fulldisk")
    c = Coordinator(root, toml).start()
    nodes = [Node(c, 40 + i) for i in range(6)]
    for n in nodes:
        n.register()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        def run() -> str:
            sizes = [p.stat().st_size for p in c.state.iterdir() if p.is_file()]
            resource.prlimit(c.proc.pid, resource.RLIMIT_FSIZE, (max(sizes), hard))
            rs: list[httpx.Response] = []
            lock = threading.Lock()

            def load(n: Node) -> None:
                for _ in range(10):
                    r = n.post("/v1/lease", b"{}")
                    with lock:
                        rs.append(r)
                    if r.status_code == 200 and r.json().get("task"):
                        n.post("/v1/abandon", json.dumps({"task_id": r.json()["task"]["task_id"]}).encode())
            ts = [threading.Thread(target=load, args=(n,)) for n in nodes]
            for t in ts:
                t.start()
            for t in ts:
                t.join(120)
            degraded = c.public()["degraded"]
            resource.prlimit(c.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))
            end = time.monotonic() + 30
            back = None
            while time.monotonic() < end:
                r = nodes[0].post("/v1/lease", b"{}")
                if r.status_code == 200:
                    back = time.monotonic() - (end - 30)
                    break
                time.sleep(0.5)
            why = str(degraded).split("refused to ")[-1][:70]
            return (f"under load: {codes(rs)}; degraded: {why!r}; space back -> lease 200 after "
                    f"{back:.1f}s" if back is not None else f"under load: {codes(rs)}; NOT recovered")
        attack(c, "disk full under load (RLIMIT_FSIZE on the process), then space returns", "503", run,
               stored_ok=lambda st: True, rss_check=False)
        ROWS[-1]["verdict"] = "503, recovers" if "lease 200" in ROWS[-1]["got"] and ROWS[-1]["up"] else "CHECK"
    finally:
        c.stop()


# ---------------------------------------------------------------------------------------------- norm bound
def norm_bound(root: Path) -> dict[str, Any]:
    """8 nodes each train one task of version 0 (quorum 8); in 'attacked' the 8th sends its update x 1e4.
    The exact weights before/after come from the aggregator state files, the plan from the state store."""
    out = {}
    for label, rule, hostile in (("honest", "robust", False), ("attacked", "robust", True),
                                 ("undefended", "mean", True)):
        d = root / label
        d.mkdir()
        toml = run_toml(d / "run.toml", "norm", quorum=8, rule=rule)
        c = Coordinator(d, toml).start()
        try:
            tr = Trainer(toml)
            nodes = [Node(c, 50 + i) for i in range(8)]
            for n in nodes:
                assert n.register().status_code == 200
            for i, n in enumerate(nodes):
                task = n.lease()
                delta = tr.delta(c, task)
                if hostile and i == 7:
                    delta = {k: v * 1e4 for k, v in delta.items()}
                data, _ = tr.encode(n, task, delta)
                r = n.upload(task, data)
                assert r.status_code == 200, r.text
            end = time.monotonic() + 120
            while c.public()["model_version"] < 1 and time.monotonic() < end:
                time.sleep(0.2)
            agg = c.state / "blobs" / "agg" / "r000"
            t0 = np.fromfile(agg / "v00000000.theta", dtype="<f4")
            t1 = np.fromfile(agg / "v00000001.theta", dtype="<f4")
            con = sqlite3.connect(f"file:{c.state / 'coordinator.db'}?mode=ro", uri=True)
            spec = json.loads(con.execute("SELECT spec FROM merge_tasks WHERE phase = 'apply' AND job_id != "
                                          "'j0000000' ORDER BY seq DESC LIMIT 1").fetchone()[0])
            con.close()
            published = tr.base(c, 1)
            out[label] = {"theta0": t0, "theta1": t1, "plan": spec["plan"], "outer": spec["outer"],
                          "damping": spec["damping"], "max_move": float(np.abs(t1 - t0).max()),
                          "largest_w0": float(np.abs(t0).max()), "largest_w1": float(np.abs(t1).max()),
                          "published_max_move": float((tr.spec.layout.flatten(published) - torch.from_numpy(t0))
                                                      .abs().max())}
        finally:
            c.stop()
    a, h = out["attacked"], out["honest"]
    o = a["outer"]
    step = o["lr"] * (1 + o["momentum"] if o["nesterov"] else 1.0) * a["damping"]
    out["cap"] = step * a["plan"]["bound"]
    out["step"] = step
    out["shift_vs_honest"] = float(np.abs(a["theta1"] - h["theta1"]).max())
    return out


# ---------------------------------------------------------------------------------------------- report
def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} logical cores (shared), Python {platform.python_version()}, torch {torch.__version__}"


def write(out: Path, nb: dict[str, Any], argv: list[str], seconds: float) -> None:
    lines = ["# Protocol attacks against a real coordinator", "",
             f"Command: `{' '.join(['PYTHONPATH=src python bench/bench_protocol_attacks.py', *argv])}`",
             "", f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}. Wall time {seconds:.0f} s.", "",
             "Each row: one attack against `trainnet coordinator` (a subprocess on 127.0.0.1, shipped defaults: "
             "robust rule norm_clip:2+trimmed_mean:0.2, verification with probation, header deadline 10 s (also for "
             "JSON bodies), 512 connections of which 256 per address, 16 KiB request heads, 30 new identities "
             "per address per minute; a 21,600-parameter model, q2 updates, "
             "`--rate 0`). RSS = the coordinator's VmRSS before -> after, and its peak during the attack (VmHWM, "
             "reset before each). Stored = rows added to the buffer/lease/audit/node tables and the update/audit/"
             "version logs (refusal counters and events not counted) and files added anywhere under the bench's "
             "directory except the database and logs.", "",
             "| attack | status | RSS before -> after (peak) MB | stored | coordinator up | verdict |",
             "|---|---|---|---|---|---|"]
    for r in ROWS:
        if r.get("summary"):
            lines.append(f"| {r['attack']} | {r['got']} | | | | {r['verdict']} |")
            continue
        st = r["stored"]
        files = st["files"] if len(st["files"]) <= 2 else [f"{len(st['files'])} files (the merge's versions, "
                                                            "updates, audits)"]
        stored = ", ".join([f"{k} {v:+d}" for k, v in sorted(st["rows"].items())] + [f"file {f}" for f in files])
        lines.append(f"| {r['attack']} | {r['got']} | {r['rss0']:.0f} -> {r['rss1']:.0f} ({r['peak']:.0f}) | "
                     f"{stored or 'nothing'} | {'yes' if r['up'] else 'NO'} | {r['verdict']} |")
    a, h, u = nb["attacked"], nb["honest"], nb["undefended"]
    p = a["plan"]
    ns = sorted(p["norms"])
    med = ns[len(ns) // 2] if len(ns) % 2 else 0.5 * (ns[len(ns) // 2 - 1] + ns[len(ns) // 2])
    lines += ["", "## One valid but huge q2 update among 7 honest ones", "",
              "Three coordinators (quorum 8), each fed the same 8 trained tasks of version 0 over HTTP; in "
              "'attacked' and 'undefended' the 8th node sends its real update x 10,000 (a valid q2 message). "
              "Max |Δweight| is measured on the exact parameters the aggregator wrote (agg/r000/v*.theta), "
              "before and after the one merge; the plan (norms, bound, row scales) is the apply phase's as stored.",
              "", "| run | rule | max abs weight v0 -> v1 | max abs Δweight | of the published model |",
              "|---|---|---|---|---|"]
    for label, rule in (("honest", "robust"), ("attacked", "robust"), ("undefended", "mean")):
        x = nb[label]
        lines.append(f"| {label} | {rule if rule == 'mean' else 'norm_clip:2+trimmed_mean:0.2'} | "
                     f"{x['largest_w0']:.4f} -> {x['largest_w1']:.4f} | {x['max_move']:.6f} | "
                     f"{x['published_max_move']:.6f} |")
    lines += ["", f"Attacked merge: update norms median {med:.4g}, hostile {max(p['norms']):.4g}; bound "
              f"(2 x median) {p['bound']:.4g}; the hostile row scaled by {min(p['row_scale']):.3g}. A coordinate "
              f"of the clipped trimmed mean is at most the bound, so one outer step (lr {a['outer']['lr']} x "
              f"(1 + momentum {a['outer']['momentum']}) x damping {a['damping']:.3g} = {nb['step']:.3f}) moves a "
              f"weight by at most {nb['cap']:.6f}: measured {a['max_move']:.6f} "
              f"({'within' if a['max_move'] <= nb['cap'] * (1 + 1e-5) else 'OVER'} the bound). The attacked model "
              f"differs from the all-honest one by at most {nb['shift_vs_honest']:.6f} per weight; without the "
              f"defence (mean) the same update moves a weight by {u['max_move']:.2f} "
              f"({u['max_move'] / max(h['max_move'], 1e-12):,.0f} x the honest merge's {h['max_move']:.6f})."]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/security_protocol.md"))
    ap.add_argument("--slowloris-s", type=float, default=30.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tn-attacks-") as tmp:
        root = Path(tmp)
        (root / "main").mkdir()
        toml = run_toml(root / "main" / "run.toml", "attacks")
        c = Coordinator(root / "main", toml).start()
        try:
            protocol_attacks(c, Trainer(toml), args.slowloris_s)
        finally:
            c.stop()
        (root / "reveal").mkdir()
        withheld_reveal(root / "reveal")
        for i, what in enumerate(("pending update", "latest published delta", "aggregator state (theta)")):
            (root / f"corrupt{i}").mkdir()
            corruption(root / f"corrupt{i}", what)
        (root / "disk").mkdir()
        full_disk(root / "disk")
        (root / "norm").mkdir()
        nb = norm_bound(root / "norm")
        outside = [p for p in Path(tmp).parent.glob("escape*")] + [p for p in root.rglob("*escape*")]
        ROWS.append({"attack": "files or folders named by a hostile id (*escape*), bench directory and its parent",
                     "summary": True, "got": f"{len(outside)} found", "verdict": "none" if not outside else "CHECK"})
    write(args.out, nb, sys.argv[1:], time.perf_counter() - t0)


if __name__ == "__main__":
    main()
