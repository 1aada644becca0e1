"""Issue 12 at 124M parameters: control-plane and aggregator memory, merge time, worker download bits/param.

    PYTHONPATH=src python bench/bench_scale_124m.py                       # -> bench/results/scale_124m.md + .json
    PYTHONPATH=src python bench/bench_scale_124m.py --tiny --out /tmp/s.md # a 1-minute smoke run on a tiny model

Model: gpt-bytes at GPT-2-small shape (12 layers, d 768, 12 heads, vocab 50304, block 1024: 124.5M parameters,
lm_head tied). Everything goes through the shipped processes: `trainnet coordinator --aggregators 0` (the
control plane), N `trainnet aggregator` processes (one per shard), the state in a database, the bytes in a blob
store. The "workers" are this process: each of 16 nodes has a real ed25519 key, registers, leases a task and
delivers a q2-encoded update of the model's exact shapes through the HTTP API (CoordinatorClient.upload: a
presigned PUT to the object store + a signed commit where the store presigns, a POST to the coordinator
otherwise). The updates are synthetic (random pseudo-gradients, std 1e-3, 4 variants cycled), encoded with the
shipped q2 codec and signed as a worker signs them: training 124M on 2 CPU cores would take hours per task.

Scenarios (each a fresh run, fresh processes):
  s3-2  PostgreSQL + moto S3 behind the byte-counting front (worker/scaleout.py), 2 aggregator shards: the
        coordinator's RSS and the update bytes it receives while it accepts 16 presigned uploads and the merge
  fs-1  SQLite + filesystem blob store, 1 aggregator shard: merge of 16 updates
  fs-2  the same with 2 shards, then `--extra` small versions (2 updates each, a grace-window merge) so that a
        worker can follow several consecutive versions (full_every = 2, so a bf16 full checkpoint is among them)
Peak RSS is the kernel's VmHWM of each process (/proc/PID/status), reset (clear_refs 5) just before the 16
uploads, so it is the peak while accepting and merging, not the start-up; the start-up peak is reported too.
Download bits/param: a VersionFetcher (the worker's own code, signed manifests, sha256-checked blobs) follows
version 0 -> 1 -> ... and counts every byte its client receives (manifest replies included).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
from simrunner import cpu_model  # noqa: E402  (bench/ is the script directory)

from trainnet.codec.spec import parse_codec  # noqa: E402
from trainnet.models import build_model  # noqa: E402
from trainnet.protocol import auth  # noqa: E402
from trainnet.protocol.wire import encode_update, header_sha256  # noqa: E402
from trainnet.train.local import params_of  # noqa: E402
from trainnet.worker.client import CoordinatorClient  # noqa: E402
from trainnet.worker.procs import LocalCluster, write_toml  # noqa: E402
from trainnet.worker.versions import VersionFetcher  # noqa: E402

MB = 1e6
GPT2_SMALL = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304}
TINY = {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 64, "vocab_size": 512}


# ------------------------------------------------------------------ /proc
def proc_mem(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (MB) of a live process; {} when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for f in ("VmRSS", "VmHWM"):
        m = re.search(rf"{f}:\s+(\d+) kB", text)
        if m:
            out[f] = int(m.group(1)) * 1024 / MB
    return out


def reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for t in Path(f"/proc/{pid}/task").iterdir():
            out += [int(x) for x in (t / "children").read_text().split()]
    return out


# ------------------------------------------------------------------ the run
def write_run(out: Path, model: dict[str, Any], shards: int, grace_s: float, full_every: int,
              block: int) -> Path:
    return write_toml(out / "run.toml", {
        "name": "bench124m", "model": model,
        "data": {"max_bytes": 8_000_000, "shard_bytes": 131072, "val_every": 50},
        "inner": {"batch_size": 1},
        "consensus": {"h": 4, "quorum": 16, "grace_s": grace_s, "min_updates": 1, "target_staleness": 0.0,
                      "verify_rate": 0.0, "lease_s": 3600.0, "max_staleness": 8},
        "sim": {"tokens": 10**10, "codec": "q2", "eval_batches": 1, "eval_batch_size": 1},
        "aggregate": {"shards": shards, "full_every": full_every, "publish_codec": "q4", "block": block},
    })


class Node:
    """One simulated worker: its own key, registered through the HTTP API."""

    def __init__(self, url: str, key_dir: Path) -> None:
        self.client = CoordinatorClient(url, auth.load_or_create_key(key_dir))
        self.info = self.client.info()
        self.client.register()

    def lease(self, deadline_s: float = 600.0) -> dict[str, Any]:
        end = time.monotonic() + deadline_s
        while True:
            r = self.client.lease()
            if r.get("task"):
                return r
            if time.monotonic() > end:
                raise RuntimeError(f"no task: {r}")
            time.sleep(min(2.0, float(r.get("retry_after_s") or 1.0)))

    def body(self, lease: dict[str, Any], encoded: dict[str, Any]) -> tuple[bytes, str, dict[str, Any]]:
        """The update as a worker delivers it: wire format, sha256s, the update signature, the signed metadata."""
        c, task = self.client, lease["task"]
        codec = task.get("codec") or self.info["codec"]
        extra = {"tokens": task["tokens"], "steps": task["hparams"]["steps"]}
        body = encode_update(encoded, codec, run_id=c.run_id, node_id=c.node_id, task_id=task["task_id"],
                             base_version=task["base_version"], extra=extra)
        sha, hsha = hashlib.sha256(body).hexdigest(), header_sha256(body)
        sig = auth.sign_update(c.key, c.run_id, c.node_id, task["task_id"], task["base_version"], sha, hsha)
        meta = {"base_version": task["base_version"], "sha256": sha, "header_sha256": hsha, "nbytes": len(body),
                "codec": codec, **extra}
        return body, sig, meta

    def deliver(self, lease: dict[str, Any], body: bytes, sig: str, meta: dict[str, Any]) -> dict[str, Any]:
        reply = self.client.upload(lease["task"], lease["upload"], body, sig, meta)
        if not reply.get("accepted"):
            raise RuntimeError(f"update refused: {reply}")
        return reply


def wait_version(cl: LocalCluster, v: int, timeout: float, procs: list[Any]) -> float | None:
    """Seconds until version v is published (None: not within timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for p in procs:
            if not p.alive:
                raise RuntimeError(f"{p.name} exited ({p.returncode}):\n{p.log_tail()}")
        s = cl.status()
        if s.get("published") and s.get("model_version", -1) >= v:
            return time.monotonic() - t0
        time.sleep(0.25)
    return None


TASK_RE = re.compile(r"merge task (\S+) shard (\d+) (\w+) done in ([\d.]+)s")


def task_times(cl: LocalCluster) -> list[dict[str, Any]]:
    out = []
    for c in cl.services:
        for m in TASK_RE.finditer(c.log_path.read_text(errors="replace")):
            out.append({"proc": c.name, "job": m.group(1), "shard": int(m.group(2)), "phase": m.group(3),
                        "s": float(m.group(4))})
    return out


def mem_snapshot(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    return {name: proc_mem(pid) for name, pid in pids.items()}


def scenario(name: str, store: str, shards: int, extra: int, model: dict[str, Any], variants: list[dict],
             merge_cap_s: float, block: int, log: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"name": name, "store": store, "shards": shards}
    with tempfile.TemporaryDirectory(prefix=f"bench124m-{name}-") as tmp, contextlib.ExitStack() as es:
        out = Path(tmp)
        grace = 3600.0 if extra == 0 else 45.0
        run_toml = write_run(out, model, shards, grace, full_every=2 if extra else 16, block=block)
        stack = None
        if store == "s3":
            from trainnet.worker import scaleout

            stack = es.enter_context(scaleout.scale_out_stack(out, "bench124m"))
            db, blobs, env = stack.db_url, stack.blob_url, stack.env
            res["db"] = stack.db_kind
        else:
            db, blobs, env = f"sqlite:///{out / 'state.db'}", str(out / "blobs"), None
            res["db"] = "sqlite"
        coord_args = ["--db", db, "--blobs", blobs, "--aggregators", "0", "--verify-rate", "0",
                      "--eval-interval", "1000000", "--rate", "0", "--register-per-ip", "0", "--ip-rate", "0"]
        cl = es.enter_context(LocalCluster(out, run_toml, workers=0, coordinator_args=coord_args, env=env))
        aggs = [cl.add_service(f"aggregator{i}", ["aggregator", "--run", str(run_toml), "--db", db, "--blobs", blobs,
                                                  "--threads", "1"]) for i in range(shards)]
        for a in aggs:
            a.start()
        t0 = time.monotonic()
        cl.start_coordinator()
        info = cl.wait_ready(timeout=600)
        res["n_params"] = int(info["n_params"])
        procs = [cl.coordinator, *aggs]
        dt = wait_version(cl, 0, 900, procs)
        res["startup_to_v0_s"] = round(time.monotonic() - t0, 1)
        log(f"[{name}] version 0 published {res['startup_to_v0_s']}s after start ({dt:.1f}s after ready)")
        cpid = cl.coordinator.proc.pid
        pids = {"coordinator": cpid, **{a.name: a.proc.pid for a in aggs}}
        for i, p in enumerate(children(cpid)):
            pids[f"coordinator_child{i}"] = p
        res["mem_startup"] = mem_snapshot(pids)  # VmHWM here: start-up (model build) and the init job

        nodes = [Node(cl.url, out / "nodes" / f"n{i:02d}") for i in range(16)]
        leases = [n.lease() for n in nodes]
        res["upload_method"] = leases[0]["upload"]["method"]
        bodies = [n.body(ls, variants[i % len(variants)]) for i, (n, ls) in enumerate(zip(nodes, leases, strict=True))]
        res["update_bytes"] = len(bodies[0][0])
        for pid in pids.values():
            reset_peak(pid)
        res["mem_before_round"] = mem_snapshot(pids)
        n_init_tasks = len(task_times(cl))
        t_up = time.monotonic()
        for n, ls, (body, sig, meta) in zip(nodes, leases, bodies, strict=True):
            n.deliver(ls, body, sig, meta)
        t_acc = time.monotonic()
        res["upload_16_s"] = round(t_acc - t_up, 2)
        res["mem_after_accept"] = mem_snapshot(pids)
        log(f"[{name}] 16 updates of {res['update_bytes'] / MB:.1f} MB accepted in {res['upload_16_s']}s "
            f"({res['upload_method']}); merging")
        del bodies
        dt = wait_version(cl, 1, merge_cap_s, procs)
        res["merge_wall_s"] = None if dt is None else round(dt, 2)
        res["mem_after_merge"] = mem_snapshot(pids)
        res["tasks_round"] = task_times(cl)[n_init_tasks:]
        st = cl.status()
        res["merged_in_round"] = st.get("updates_merged")
        log(f"[{name}] merge: {res['merge_wall_s']}s ({st.get('updates_merged')} updates merged)")
        traffic = cl.operator_status().get("traffic") or {}
        res["coordinator_traffic"] = traffic
        res["coordinator_update_bytes_in"] = int(traffic.get("update_in", 0))
        if stack is not None:
            res["object_store"] = stack.proxy.counts()

        versions = [0] if dt is None else [0, 1]
        for k in range(extra if dt is not None else 0):
            two = nodes[2 * k % 16: 2 * k % 16 + 2]
            ls = [n.lease() for n in two]
            for j, (n, lease) in enumerate(zip(two, ls, strict=True)):
                n.deliver(lease, *n.body(lease, variants[(k + j) % len(variants)]))
            v = 2 + k
            w = wait_version(cl, v, merge_cap_s, procs)
            if w is None:
                log(f"[{name}] version {v} not published within {merge_cap_s}s")
                break
            versions.append(v)
            log(f"[{name}] version {v} published {w:.1f}s after its 2 updates (grace window {grace:.0f}s + merge)")
        res["mem_end"] = mem_snapshot(pids)
        res["tasks_all"] = task_times(cl)
        if extra:
            res["download"] = follow_versions(cl.url, out / "follower", versions, res["n_params"], model)
        res["status"] = cl.status()
    return res


def follow_versions(url: str, key_dir: Path, versions: list[int], n_params: int,
                    model: dict[str, Any]) -> list[dict[str, Any]]:
    """A worker following the published versions: bytes its client receives per version."""
    from trainnet.models.config import ModelConfig

    template = params_of(build_model(ModelConfig(**model), seed=0))
    client = CoordinatorClient(url, auth.load_or_create_key(key_dir))
    info = client.info()
    fetch = VersionFetcher(client, template, signer=info["signer"])
    rows, have = [], None
    for v in versions:
        b0 = client.bytes_down
        params = fetch.get(v, have=have)
        m = fetch.manifest(v)
        nbytes = client.bytes_down - b0
        rows.append({"version": v, "bytes": nbytes, "bits_per_param": 8 * nbytes / n_params,
                     "how": "full" if have is None else "delta", "manifest_has_full": m.get("full") is not None,
                     "exact": bool(m.get("exact", False))})
        have = (v, params)
    client.close()
    return rows


# ------------------------------------------------------------------ report
def fmt_mb(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def report(data: dict[str, Any]) -> str:
    sc = {r["name"]: r for r in data["scenarios"]}
    n = next(iter(sc.values()))["n_params"]
    state_mb = 4 * n / MB
    L = ["# 124M-parameter scale check (issue 12: memory and data-plane goals)", "",
         f"Command: `{data['command']}`", "",
         f"Machine: {data['cpu']}, {data['cores']} cores, {data['ram_gb']:.0f} GB RAM, Python {data['python']}, "
         f"torch {data['torch']}; load average {data['load_start']} at the start, {data['load_end']} at the end "
         f"(the machine was shared with other benchmarks). Date {data['date']}. Total bench wall time "
         f"{data['wall_s'] / 60:.1f} min.", "",
         f"Model: gpt-bytes, 12 layers, d 768, 12 heads, vocab 50304, block 1024: **{n:,} parameters** "
         f"(fp32 state {state_mb:.0f} MB). 16 synthetic q2 updates per round (random pseudo-gradients of the model's "
         f"shapes, std 1e-3, encoded with the shipped q2 codec, signed with real ed25519 worker keys, delivered "
         f"through the HTTP API on 127.0.0.1): training 124M on 2 CPU cores would take hours per task, so nothing "
         f"is trained; the data plane cannot tell. Rule: the default `robust` (norm_clip:2 + trimmed_mean:0.2), "
         f"verification off (synthetic updates cannot pass an audit), held-out evaluation only of version 0 "
         f"(eval_batches 1 x 1 window). What each scenario runs: the docstring of `bench/bench_scale_124m.py`.", ""]
    # 1. coordinator
    L += ["## 1. Coordinator (control-plane process) while it accepts 16 updates", "",
          "| scenario | upload path | update size MB | 16 uploads s | coordinator peak RSS MB while accepting + merging "
          "(VmHWM after reset) | RSS after accept / after merge MB | start-up peak MB (model build, init job) | "
          "update bytes received by the coordinator | object store bytes in MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["scenarios"]:
        c = r["mem_after_merge"].get("coordinator") or r["mem_end"].get("coordinator", {})
        os_in = r.get("object_store", {}).get("bytes_in")
        L.append(f"| {r['name']} ({r['db']} + {r['store']}) | {r['upload_method']} | {r['update_bytes'] / MB:.1f} | "
                 f"{r['upload_16_s']} | **{fmt_mb(c.get('VmHWM'))}** | "
                 f"{fmt_mb(r['mem_after_accept']['coordinator'].get('VmRSS'))} / {fmt_mb(c.get('VmRSS'))} | "
                 f"{fmt_mb(r['mem_startup']['coordinator'].get('VmHWM'))} | {r['coordinator_update_bytes_in']:,} | "
                 f"{'-' if os_in is None else f'{os_in / MB:,.0f}'} |")
    L += ["", "The coordinator's data-plane pool process (audits, held-out evaluation; `server/pool.py`) is a child "
          "of the coordinator: " + "; ".join(
              f"{r['name']}: " + ", ".join(f"{k} peak {fmt_mb(v.get('VmHWM'))} MB" for k, v in r["mem_end"].items()
                                           if k.startswith("coordinator_child")) for r in data["scenarios"]) + ".", ""]
    # 2. aggregators
    L += ["## 2. Aggregator peak RSS per process vs model state", "",
          f"Model state: {state_mb:.0f} MB of fp32 parameters; per shard the aggregator keeps theta, momentum and the "
          f"published reconstruction in the blob store (3 x {state_mb:.0f} / shards MB), and holds O(n x chunk) "
          "in memory by design (chunk = 2^24 / n elements: 1M elements = 4 MB per update at n = 16).", "",
          "| scenario | shards | process | RSS idle before the round MB | peak RSS during the 16-update merge MB "
          "(VmHWM after reset) | peak / fp32 model state | start-up + init peak MB |", "|---|---|---|---|---|---|---|"]
    for r in data["scenarios"]:
        for k in sorted(x for x in r["mem_end"] if x.startswith("aggregator")):
            m = r["mem_after_merge"].get(k, {})
            L.append(f"| {r['name']} | {r['shards']} | {k} | {fmt_mb(r['mem_before_round'][k].get('VmRSS'))} | "
                     f"**{fmt_mb(m.get('VmHWM'))}** | {m.get('VmHWM', 0) / state_mb:.2f} | "
                     f"{fmt_mb(r['mem_startup'][k].get('VmHWM'))} |")
    # 3. merge time
    L += ["", "## 3. Merge wall time, 16 updates, 2 shared CPU cores", "",
          "Round wall time = from the 16th accepted upload to the version being published (coordinator status, "
          "polled every 0.25 s); the per-task seconds are what the aggregators logged (stats then apply per shard, "
          "one torch thread each). Both shards run at once on the machine's 2 cores, which other benchmarks "
          "were using too.", "",
          "| scenario | shards | round wall s | stats s per shard | apply s per shard | updates merged |",
          "|---|---|---|---|---|---|"]
    for r in data["scenarios"]:
        ts = r["tasks_round"]
        st = ", ".join(f"{t['s']:.1f}" for t in ts if t["phase"] == "stats")
        ap = ", ".join(f"{t['s']:.1f}" for t in ts if t["phase"] == "apply")
        L.append(f"| {r['name']} ({r['store']}) | {r['shards']} | "
                 f"{'not done in cap' if r['merge_wall_s'] is None else r['merge_wall_s']} | {st or '-'} | "
                 f"{ap or '-'} | {r['merged_in_round']} |")
    # 4. downloads
    L += ["", "## 4. Download bits per parameter a worker pays to follow the published versions", ""]
    dl = [r for r in data["scenarios"] if r.get("download")]
    for r in dl:
        rows = r["download"]
        L += [f"Scenario {r['name']} (publish codec q4, full_every 2 so a bf16 full checkpoint is among the versions; "
              "a VersionFetcher follows each version from the previous one, and counts every byte received: signed "
              "manifest replies and blobs):", "",
              "| version | fetched as | manifest lists a full checkpoint | bytes | bits/param |", "|---|---|---|---|---|"]
        for d in rows:
            L.append(f"| {d['version']} | {d['how']}{' (exact fp32)' if d['exact'] else ''} | "
                     f"{'yes' if d['manifest_has_full'] else 'no'} | {d['bytes']:,} | {d['bits_per_param']:.2f} |")
        fol = [d for d in rows if d["how"] == "delta"]
        if fol:
            avg = sum(d["bits_per_param"] for d in fol) / len(fol)
            L += ["", f"Following {len(fol)} consecutive versions: **{avg:.2f} bits/param per version** on average "
                  "(a worker that already holds the previous version takes the delta even when the version also "
                  "has a full checkpoint: `aggregate/publish.py` Reconstructor.plan picks the cheaper)."]
    # goals
    L += ["", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for g in data["goals"]:
        L.append(f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |")
    if data.get("notes"):
        L += ["", "## Notes", ""] + [f"- {x}" for x in data["notes"]]
    return "\n".join(L) + "\n"


def goals(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    sc = {r["name"]: r for r in data["scenarios"]}
    s3 = sc.get("s3-2")
    if s3:
        peak = s3["mem_after_merge"]["coordinator"].get("VmHWM", 0)
        out.append({"goal": "coordinator peak RSS < 1 GB while accepting 16 presigned 124M updates",
                    "measured": f"{peak:,.0f} MB (start-up peak {s3['mem_startup']['coordinator'].get('VmHWM', 0):,.0f} MB)",
                    "met": peak < 1000})
        out.append({"goal": "coordinator update bytes received ~0 (presigned uploads)",
                    "measured": f"{s3['coordinator_update_bytes_in']:,} B", "met": s3["coordinator_update_bytes_in"] == 0})
    for r in data["scenarios"]:
        n = r["n_params"]
        ks = sorted(k for k in r["mem_after_merge"] if k.startswith("aggregator"))
        if ks:
            shard_mb = 4 * n / MB / r["shards"]
            added = [r["mem_after_merge"][k].get("VmHWM", 0) - r["mem_before_round"][k].get("VmRSS", 0) for k in ks]
            out.append({"goal": f"aggregator merge memory O(n x chunk), not O(n x params) ({r['name']}: the 16-update "
                                f"merge adds less than one fp32 copy of its shard, {shard_mb:,.0f} MB; n x shard would "
                                f"be {16 * shard_mb:,.0f} MB)",
                        "measured": "added " + " / ".join(f"{x:,.0f} MB" for x in added) + " (peak " + " / ".join(
                            f"{r['mem_after_merge'][k].get('VmHWM', 0):,.0f}" for k in ks) + " MB)",
                        "met": max(added) < shard_mb})
    for r in data["scenarios"]:
        fol = [d for d in r.get("download") or [] if d["how"] == "delta"]
        if fol:
            avg = sum(d["bits_per_param"] for d in fol) / len(fol)
            out.append({"goal": "download <= 8 bits/param per version on average (following)",
                        "measured": f"{avg:.2f} bits/param over versions {fol[0]['version']}-{fol[-1]['version']}",
                        "met": avg <= 8})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", nargs="+", default=["fs-1", "fs-2", "s3-2"])
    ap.add_argument("--extra", type=int, default=2, help="small versions after the round in fs-2 (download bits)")
    ap.add_argument("--merge-cap", type=float, default=600.0, help="seconds to wait for a merge")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (smoke test)")
    ap.add_argument("--out", default="bench/results/scale_124m.md")
    ap.add_argument("--render", help="only re-write --out from this JSON (e.g. after adding notes to it)")
    a = ap.parse_args()
    if a.render:
        data = json.loads(Path(a.render).read_text())
        data["goals"] = goals(data)
        Path(a.out).write_text(report(data))
        return
    t_start = time.monotonic()
    load0 = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    torch.set_num_threads(1)
    model = TINY if a.tiny else GPT2_SMALL
    block = 1 << 12 if a.tiny else 1 << 20

    def log(msg: str) -> None:
        print(f"{time.monotonic() - t_start:7.1f}s {msg}", file=sys.stderr, flush=True)

    # the update variants: random pseudo-gradients of the model's shapes, q2-encoded once (cycled over nodes)
    from trainnet.models.config import ModelConfig

    shapes = {k: tuple(v.shape) for k, v in build_model(ModelConfig(**model), seed=0).named_parameters()}
    codec = parse_codec("q2")
    g = torch.Generator().manual_seed(0)
    variants = [{k: codec.encode(torch.randn(s, generator=g) * 1e-3) for k, s in shapes.items()} for _ in range(4)]
    log(f"encoded 4 q2 update variants of {sum(torch.Size(s).numel() for s in shapes.values()):,} parameters")
    specs = {"fs-1": ("fs", 1, 0), "fs-2": ("fs", 2, a.extra), "s3-2": ("s3", 2, 0)}
    scen = []
    for name in a.scenarios:
        store, shards, extra = specs[name]
        try:
            scen.append(scenario(name, store, shards, extra, model, variants, a.merge_cap, block, log))
        except Exception as exc:  # report what failed, keep the other scenarios
            log(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
            raise
    mem = Path("/proc/meminfo").read_text()
    data = {
        "command": "PYTHONPATH=src python bench/bench_scale_124m.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "ram_gb": int(re.search(r"MemTotal:\s+(\d+)", mem).group(1)) / 2**20,
        "python": platform.python_version(), "torch": torch.__version__,
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "load_start": load0, "load_end": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "wall_s": time.monotonic() - t_start, "scenarios": scen, "notes": [],
    }
    data["goals"] = goals(data)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    out.write_text(report(data))
    print(out.read_text())


if __name__ == "__main__":
    main()
