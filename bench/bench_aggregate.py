"""Aggregation cost per merge: the real data plane (run_merge_task) on synthetic q2 updates.

    PYTHONPATH=src python bench/bench_aggregate.py                       # the default grid -> results/aggregate.md
    PYTHONPATH=src python bench/bench_aggregate.py --sizes 1 --updates 4 --repeats 1 --out /tmp/a.md   # quick
    PYTHONPATH=src python bench/bench_aggregate.py --one '{"mparams": 8, "n": 16, "shards": 1}'      # one config

Every config runs in a fresh subprocess (so peak-memory figures do not inherit an earlier config's heap):
a `Coordinator` (core/) with quorum n and `aggregate.shards` S starts the run, aggregator shards write
version 0 through `run_merge_task` over a filesystem BlobStore (`FsBlobStore`, ext4 under /tmp, fsync on
put), nodes lease and upload q2-encoded random updates (encode_update) and merge 1 publishes version 1
(untimed warm-up, 2 updates). Then half of the next merge's n updates are based on version 0
(staleness 1, re-based against the published reconstruction: stale_mode "endpoint") and half on version 1,
as the quorum scaling expects (~target_staleness versions); merge 2's stats and apply tasks are timed, each run `--repeats`
times (medians; a task run twice writes the same bytes). Shards run one after another in this process:
"s" is the sum over shards, "max shard" the slowest one (what S aggregators in parallel would take).
Measured per phase: wall seconds (time.perf_counter) and this process's CPU seconds (time.process_time;
the machine is shared, so wall time also measures other people's jobs), bytes read from and written to the
blob store and the number of reads (a counting wrapper), and the process's peak resident set during the task
(VmHWM after a reset; torch allocations are invisible to tracemalloc). Model: tensors of 1024 x 1024.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from trainnet.aggregate import keys
from trainnet.aggregate.layout import ParamLayout
from trainnet.aggregate.merge import ShardEnv, run_merge_task
from trainnet.aggregate.publish import build_manifest
from trainnet.codec.spec import parse_codec
from trainnet.core import Coordinator
from trainnet.core.records import CoordinatorConfig
from trainnet.data.corpus import load_corpus
from trainnet.protocol.messages import LeaseRequest, Register, UpdateSubmission
from trainnet.protocol.wire import WireLimits, encode_update, header_sha256
from trainnet.store.blob_fs import FsBlobStore

MI = 1 << 20


class CountingFs(FsBlobStore):
    """FsBlobStore that counts the bytes it returns and stores (the merge's I/O)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read = 0
        self.written = 0
        self.requests = 0  # get/get_range calls: what a remote store charges latency (and money) for

    def get(self, key: str) -> bytes:
        data = super().get(key)
        self.read += len(data)
        self.requests += 1
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = super().get_range(key, start, length)
        self.read += len(data)
        self.requests += 1
        return data

    def put(self, key: str, data: bytes) -> str:
        self.written += len(data)
        return super().put(key, data)

    def put_stream(self, key: str, chunks: Any, max_bytes: int) -> tuple[int, str]:
        size, sha = super().put_stream(key, chunks, max_bytes)
        self.written += size
        return size, sha


class RssPeak:
    """`with RssPeak() as m: ...; m.peak_mb`: the process's peak resident set over the block.

    Resets the kernel's high-water mark first (`5` into /proc/self/clear_refs), then reads VmHWM: an absolute
    peak, which allocator reuse cannot hide (a growth-over-start figure would, after the warm-up merge).
    """

    @staticmethod
    def _status(field: str) -> float:
        with open("/proc/self/status") as f:
            return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) / 1e3

    def __enter__(self) -> RssPeak:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_mb = self._status("VmHWM")


def _run_phase(tasks: list[dict], env: ShardEnv, blobs: CountingFs, repeats: int) -> tuple[dict, dict]:
    """Run every shard task of one phase `repeats` times; (measurements, {shard: result})."""
    per_shard, cpu_shard, results, read, written, gets, peak = [], [], {}, 0, 0, 0, 0.0
    for t in tasks:
        times, cpu = [], []
        for r in range(repeats):
            blobs.read = blobs.written = blobs.requests = 0
            with RssPeak() as m:
                t0, c0 = time.perf_counter(), time.process_time()
                results[t["shard"]] = run_merge_task(t["spec"], env)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            if r == 0:
                read, written, gets = read + blobs.read, written + blobs.written, gets + blobs.requests
            peak = max(peak, m.peak_mb)
        per_shard.append(times)
        cpu_shard.append(cpu)
    med = [statistics.median(x) for x in per_shard]
    return {"s": sum(med), "cpu_s": sum(statistics.median(x) for x in cpu_shard), "s_max_shard": max(med),
            "s_min": sum(min(x) for x in per_shard),
            "s_max": sum(max(x) for x in per_shard), "read": read, "written": written, "gets": gets, "peak_mb": peak}, results


def _drive(core: Coordinator, env: ShardEnv, blobs: CountingFs, now: float, repeats: int = 0) -> dict:
    """Run the job in flight to publication; with repeats > 0, time its phases."""
    out: dict[str, Any] = {}
    while core.jobs:
        job = next(iter(core.jobs.values()))
        tasks = [t for t in core.take_changes().merge_tasks if t["job_id"] == job.job_id]
        timing, res = _run_phase(tasks, env, blobs, max(1, repeats))
        if repeats:
            out[job.phase] = timing
        if job.phase == "stats":
            core.merge_stats_done(job.job_id, res, now)
            continue
        spec = tasks[0]["spec"]
        doc = build_manifest(spec["run_id"], job.kind, spec["version_to"], env.layout.numel, list(res.values()),
                             now, exact=spec["publish"]["exact"])
        blobs.put(keys.manifest(spec["version_to"]), json.dumps(doc).encode())
        core.merge_applied(job.job_id, keys.manifest(spec["version_to"]), now)
    return out


def run_one(mparams: int, n: int, shards: int = 1, threads: int = 1, rule: str = "robust",
            repeats: int = 3) -> dict[str, Any]:
    """One config (model of `mparams` x 2^20 parameters, merges of n updates): the measurements as a dict."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layout = ParamLayout.from_shapes([(f"w{i:03d}", (1024, 1024)) for i in range(mparams)])
    corpus = load_corpus(None, shard_bytes=32768, val_every=8, max_bytes=1 << 20)
    cfg = CoordinatorConfig(run_id="bench", tokens_target=10**12, h=10, batch_size=1, seq_len=8, quorum=n,
                            codec="q2", shards=shards, full_every=16, verify_rate=0.0, aggregator=rule)
    codec = parse_codec("q2")
    variants = [{k: codec.encode(torch.randn(s) * 1e-3) for k, s in zip(layout.names, layout.shapes, strict=True)}
                for _ in range(4)]  # 4 distinct random updates, cycled (encoding 64 x 32M would dominate setup)
    with tempfile.TemporaryDirectory(prefix="bench-agg-") as root:
        blobs = CountingFs(Path(root))
        env = ShardEnv(blobs, layout, WireLimits(), cfg.run_id,
                       init_params=lambda: {k: torch.zeros(s) for k, s in zip(layout.names, layout.shapes, strict=True)})
        core = Coordinator.fresh(cfg, corpus.manifest, layout.numel, now=0.0)
        _drive(core, env, blobs, 0.0)  # version 0
        n1 = 2  # merge 1 (warm-up) is small: it only has to publish version 1
        nodes = [f"n{i:03d}" for i in range(n1 + n)]
        warm, stale, fresh = nodes[:n1], nodes[n1:n1 + n // 2], nodes[n1 + n // 2:]
        for node in nodes:
            core.register(Register(node, "k" + node), 0.0)
        leases = {node: core.lease(LeaseRequest(node), 1.0) for node in warm + stale}  # at version 0
        sizes = []

        def upload(node: str, i: int) -> None:
            s = leases[node]
            data = encode_update(variants[i % 4], "q2", run_id=cfg.run_id, node_id=node, task_id=s.task_id,
                                 base_version=s.base_version, extra={"tokens": s.tokens, "steps": s.hparams["steps"]})
            key = core.leases[s.task_id].upload_key
            blobs.put(key, data)
            sizes.append(len(data))
            rep = core.submit(UpdateSubmission(node, s.task_id, s.base_version, s.tokens, s.hparams["steps"], key,
                                               hashlib.sha256(data).hexdigest(), len(data), "q2",
                                               header_sha256=header_sha256(data)), 2.0)
            assert rep.accepted, rep

        core.quorum_eff = n1  # (the engine's effective quorum; core/scaling.py would set it from the swarm)
        for i, node in enumerate(warm):
            upload(node, i)
        _drive(core, env, blobs, 3.0)
        assert core.version == 1, core.status()
        core.quorum_eff = n  # merge 2, timed: n // 2 stale updates (base 0) and the rest fresh (base 1)
        for node in fresh:
            leases[node] = core.lease(LeaseRequest(node), 4.0)
        for i, node in enumerate(stale + fresh):
            upload(node, i)
        timing = _drive(core, env, blobs, 5.0, repeats)
        assert core.version == 2 and core.updates_merged == n1 + n, core.status()
    return {"mparams": mparams, "params": layout.numel, "n": n, "shards": shards, "threads": threads, "rule": rule,
            "repeats": repeats, "update_bytes": statistics.median(sizes), **timing}


def _fit(rows: list[dict], phase: str, key: str = "s") -> tuple[float, float]:
    """Least squares of seconds/param = a + b x n over the rows: (a per param, b per param x update)."""
    xs = [r["n"] for r in rows]
    ys = [r[phase][key] / r["params"] for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def _row(r: dict) -> str:
    st, ap, pu = r["stats"], r["apply"], r["params"] * r["n"]
    return (f"| {r['params'] / 1e6:.1f}M | {r['n']} | {r['shards']} | {r['threads']} | {r['rule']} | "
            f"{st['s']:.3f} ({st['s_min']:.3f}-{st['s_max']:.3f}) / {st['cpu_s']:.3f} | "
            f"{ap['s']:.3f} ({ap['s_min']:.3f}-{ap['s_max']:.3f}) / {ap['cpu_s']:.3f} | "
            f"{st['s_max_shard']:.3f} / {ap['s_max_shard']:.3f} | {st['read'] / 1e6:.1f} / {ap['read'] / 1e6:.1f} | "
            f"{st['gets']:,} / {ap['gets']:,} | {ap['written'] / 1e6:.1f} | {st['peak_mb']:.0f} / {ap['peak_mb']:.0f} | "
            f"{st['cpu_s'] / pu * 1e9:.2f} / {ap['cpu_s'] / pu * 1e9:.2f} |")


def _table(rows: list[dict], cmd: str, load: str) -> str:
    lines = [
        "# Aggregation cost per merge (real data plane, synthetic q2 updates)", "",
        f"Command: `{cmd}`", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores shared with other "
        f"work (1-minute load average {load}); Python {platform.python_version()}, torch "
        f"{torch.__version__}. Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.", "",
        "What runs: see the docstring of `bench/bench_aggregate.py` (Coordinator + `run_merge_task` over "
        "`FsBlobStore` on /tmp; merge 2 of a run, half its updates stale by one version; default rule `robust` = "
        "norm_clip:2 + trimmed_mean:0.2 unless the row says `mean`). Wall seconds are medians of the repeats "
        "(min-max in brackets), then CPU seconds of this process (time.process_time, median): on a machine this "
        "loaded, wall time measures the other engineers' jobs too, CPU time measures the merge's own work (but "
        "not its fsync waits). Summed over shards run one after another; \"max shard\" is the slowest shard "
        "(wall). The largest model and the 2,048-update row ran `--repeats-largest` times. ns/(param x update) = "
        "CPU seconds / (params x updates), fixed costs included. Peak = the whole process's peak resident set "
        "during the phase (VmHWM after a reset: torch, the run's state and the benchmark's own objects included); "
        "apply minus stats is roughly what apply adds. Read/written = bytes "
        "through the blob store in that phase; reads = get and get_range calls (an update is read in 1 MiB "
        "hash blocks per part, so a remote store's per-request latency multiplies this count).", "",
        "| params | updates | shards | threads | rule | stats s: wall (min-max) / CPU | apply s: wall (min-max) / CPU "
        "| max shard wall s (stats / apply) | read MB (stats / apply) | reads (stats / apply) | written MB (apply) "
        "| peak RSS MB (stats / apply) | CPU ns/(param x update) (stats / apply) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(r) for r in rows]
    base = [r for r in rows if r["shards"] == 1 and r["threads"] == 1 and r["rule"] == "robust"]
    lines += ["", "Fit per model size (1 shard, 1 thread, robust; least squares over the update counts): "
              "phase seconds = params x (a + b x updates); b is the cost per parameter per update, a the "
              "per-merge cost per parameter (shard state: theta, momentum, published reconstruction, re-basing "
              "arrays, publication).", "",
              "| params | seconds fitted | stats b ns/(param x update) | stats a ns/param | apply b ns/(param x update) "
              "| apply a ns/param | update MB (q2) | update bytes/param |", "|---|---|---|---|---|---|---|---|"]
    for p in sorted({r["params"] for r in base}):
        rs = [r for r in base if r["params"] == p]
        if len({r["n"] for r in rs}) < 2:
            continue
        ub = statistics.median(r["update_bytes"] for r in rs)
        for key, label in (("cpu_s", "CPU"), ("s", "wall")):
            (sa, sb), (aa, ab) = _fit(rs, "stats", key), _fit(rs, "apply", key)
            lines.append(f"| {p / 1e6:.1f}M | {label} | {sb * 1e9:.2f} | {sa * 1e9:.2f} | {ab * 1e9:.2f} | "
                         f"{aa * 1e9:.2f} | {ub / 1e6:.2f} | {ub / p:.4f} |")
    big = [r for r in base if r["n"] == max(r["n"] for r in base)]
    if big:
        r = big[0]
        pu = r["params"] * r["n"]
        lines += ["", "Planner inputs (`src/trainnet/planner/dataplane.py`): CPU seconds per parameter per update at "
                  "the largest merge measured, fixed costs included, for one core of this machine:", "",
                  "| merge | stats ns/(param x update) | apply ns/(param x update) |", "|---|---|---|",
                  f"| {r['params'] / 1e6:.1f}M x {r['n']} | {r['stats']['cpu_s'] / pu * 1e9:.2f} | "
                  f"{r['apply']['cpu_s'] / pu * 1e9:.2f} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32], help="model sizes in units of 2^20 params")
    ap.add_argument("--updates", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-largest", type=int, default=1, help="repeats on the largest model and the big-n "
                    "row (machine time)")
    ap.add_argument("--big-n", type=int, default=2048, help="also merge this many updates on the smallest model, "
                    "as many as a 4,200-node swarm's quorum (0: skip)")
    ap.add_argument("--no-extras", action="store_true", help="skip the 2-thread and `mean` rows")
    ap.add_argument("--out", default="bench/results/aggregate.md")
    ap.add_argument("--json", default=None, help="also write the raw rows as JSON here")
    ap.add_argument("--one", help="run one config (JSON of run_one's arguments) and print its JSON")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(**json.loads(a.one))))
        return
    big, mid_n = max(a.sizes), sorted(a.updates)[len(a.updates) // 2]
    grid = [{"mparams": m, "n": n, "shards": 1} for m in a.sizes for n in a.updates]
    # 2 shards (a shard owns whole 2^20-parameter blocks, so not for 1M), at one n (machine time)
    grid += [{"mparams": m, "n": mid_n, "shards": 2} for m in a.sizes if m > 1]
    if a.big_n:
        grid.append({"mparams": min(a.sizes), "n": a.big_n, "shards": 1})
    if not a.no_extras:
        mid = sorted(a.sizes)[len(a.sizes) // 2]
        grid += [{"mparams": mid, "n": mid_n, "threads": 2}, {"mparams": mid, "n": mid_n, "rule": "mean"}]
    load0 = f"{os.getloadavg()[0]:.1f}"
    rows = []
    for g in grid:
        largest = g["mparams"] == big or g["n"] == a.big_n
        g = g | {"repeats": a.repeats_largest if largest else a.repeats}
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(g)], check=True, capture_output=True,
                             text=True, env=os.environ | {"OMP_NUM_THREADS": str(g.get("threads", 1))})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['params'] / 1e6:.1f}M n={r['n']} S={r['shards']} t={r['threads']} {r['rule']}: "
              f"stats {r['stats']['s']:.3f}s apply {r['apply']['s']:.3f}s", file=sys.stderr)
    cmd = "PYTHONPATH=src python bench/bench_aggregate.py " + " ".join(sys.argv[1:])
    load = f"{load0} at the start, {os.getloadavg()[0]:.1f} at the end"
    Path(a.out).write_text(_table(rows, cmd.strip(), load))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print(Path(a.out).read_text())


if __name__ == "__main__":
    main()
