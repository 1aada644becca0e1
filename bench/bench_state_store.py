"""Persistence cost of one coordinator step: ms per StateStore.commit with 50 vs 4,200 nodes, SQLite and PostgreSQL.

    PYTHONPATH=src python bench/bench_state_store.py --commits 300 --out bench/results/state_store.md

The goal it checks: a durable step costs about the same however many nodes exist (within 2x between 50 and
4,200 nodes), because a commit writes only the rows its step touched. For each backend it fills one store with
50 nodes + 50 leases and another with 4,200 + 4,200 (plus one update-log row per node), then times commits of two
typical steps, alternating blocks of 25 commits between the two stores so machine noise hits both alike:

  lease step:   meta (the core's counters and queue) + 1 node row + 1 lease upsert or delete + 1 event
  upload step:  meta + 1 node row + 1 lease delete + 1 new buffered-update row + 1 update-log row + 1 event

Every commit is durable when it returns (SQLite WAL synchronous=FULL, fsync per commit; PostgreSQL with fsync
and synchronous_commit on, a throwaway server on loopback started like the test fixture). Reports median and
p99 per step kind and the 4,200 / 50 ratio of medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from simrunner import cpu_model  # bench/ is the script directory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from trainnet.devservers.postgres import find_pg_bin, postgres_server  # noqa: E402
from trainnet.store.state import Changes, StateStore, open_state_store  # noqa: E402

SIZES = (50, 4200)
BLOCK = 25


def node_doc(i: int) -> dict:
    return {"pub": f"{i:064x}", "joined": 1000.0 + i, "tokens": 123_456 * i, "accepted": i, "rejected": 0,
            "reputation": 1.0, "probation": False, "last_seen": 2000.0 + i, "machine": "RTX 4090, 24 GB"}


def lease_doc(i: int, step: int) -> dict:
    return {"node": f"n{i}", "task": f"t{step}", "shard": step % 997, "base_version": step // 8,
            "seed": 1_000_003 * step, "deadline": 3000.0 + step, "h": 500}


def meta_doc(step: int) -> dict:
    # The core's meta: counters, current version, and the shard queue (bounded, O(1) in the number of nodes).
    return {"version": step // 8, "step": step, "tokens": 4096 * step, "next_task": step, "next_update": step,
            "queue": list(range(step % 997, step % 997 + 64)), "momentum_blob": f"versions/{step // 8}/momentum",
            "config_hash": "ab" * 32}


def fill(store: StateStore, fence: int, n: int) -> None:
    for start in range(0, n, 1000):
        ids = range(start, min(n, start + 1000))
        store.commit(Changes(docs={"nodes": {f"n{i}": node_doc(i) for i in ids},
                                   "leases": {f"l{i}": lease_doc(i, i) for i in ids}},
                             logs={"updates": {f"u{i}": {"node": f"n{i}", "weight": 1.0} for i in ids}}), fence)


def step_changes(kind: str, step: int, n: int) -> Changes:
    i = step % n
    node = {f"n{i}": {**node_doc(i), "last_seen": 5000.0 + step}}
    if kind == "lease":
        # Alternate: grant a fresh lease (upsert), then finish one (delete), like lease/expiry traffic.
        lease = {f"x{step // 2}": lease_doc(i, step)} if step % 2 == 0 else {f"x{step // 2}": None}
        return Changes(meta=meta_doc(step), docs={"nodes": node, "leases": lease},
                       events=[{"time": float(step), "kind": "lease", "data": {"node": f"n{i}"}}])
    update = f"b{step}"
    return Changes(meta=meta_doc(step),
                   docs={"nodes": node, "leases": {f"l{i}": None},
                         "buffer": {update: {"node": f"n{i}", "blob": f"updates/{update}", "sha256": "cd" * 32,
                                             "base_version": step // 8, "tokens": 4096, "weight": 0.5}}},
                   logs={"updates": {update: {"node": f"n{i}", "accepted": True, "staleness": 1}}},
                   events=[{"time": float(step), "kind": "update", "data": {"update": update}}])


def measure(stores: dict[int, StateStore], commits: int) -> dict[tuple[int, str], list[float]]:
    fences = {n: s.acquire_writer(f"bench-{n}") for n, s in stores.items()}
    for n, s in stores.items():
        fill(s, fences[n], n)
    times: dict[tuple[int, str], list[float]] = {(n, k): [] for n in stores for k in ("lease", "upload")}
    step = 0
    for n, s in stores.items():  # warm up caches and connections, untimed
        for _ in range(20):
            step += 1
            s.commit(step_changes("lease", step, n), fences[n])
    for _ in range(commits // BLOCK):
        for kind in ("lease", "upload"):
            for n, s in stores.items():
                for _ in range(BLOCK):
                    step += 1
                    changes = step_changes(kind, step, n)
                    t0 = time.perf_counter()
                    s.commit(changes, fences[n])
                    times[(n, kind)].append((time.perf_counter() - t0) * 1000)
    return times


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


@contextmanager
def sqlite_stores(tmp: Path) -> Iterator[tuple[dict[int, StateStore], str]]:
    stores = {n: open_state_store(f"sqlite:///{tmp}/state{n}.db") for n in SIZES}
    try:
        yield stores, f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL), files under {tmp.parent}"
    finally:
        for s in stores.values():
            s.close()


@contextmanager
def postgres_stores(tmp: Path) -> Iterator[tuple[dict[int, StateStore], str]]:
    import psycopg

    with postgres_server() as base:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
            for n in SIZES:
                admin.execute(f"CREATE DATABASE bench{n}")
            version = admin.execute("SHOW server_version").fetchone()[0]
        stores = {n: open_state_store(f"{base}/bench{n}") for n in SIZES}
        try:
            yield stores, (f"PostgreSQL {version} (fsync on, synchronous_commit on), throwaway server on 127.0.0.1, "
                           f"data under {tmp.parent}")
        finally:
            for s in stores.values():
                s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commits", type=int, default=300, help="timed commits per (backend, size, step kind)")
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "state_store.md")
    args = ap.parse_args()
    backends: dict[str, Callable] = {"sqlite": sqlite_stores, "postgres": postgres_stores}
    rows, notes = [], []
    started = dt.datetime.now(dt.UTC)
    load = os.getloadavg()[0]
    for name in args.backends:
        if name == "postgres" and find_pg_bin() is None:
            notes.append("PostgreSQL was not measured: initdb/pg_ctl not found.")
            continue
        with tempfile.TemporaryDirectory(prefix="trainnet-bench-") as d, backends[name](Path(d)) as (stores, desc):
            times = measure(stores, args.commits)
            notes.append(f"{name}: {desc}")
            for kind in ("lease", "upload"):
                med = {n: statistics.median(times[(n, kind)]) for n in SIZES}
                for n in SIZES:
                    xs = times[(n, kind)]
                    rows.append((name, kind, n, step_changes(kind, 2, n).rows(), med[n], p99(xs), len(xs),
                                 med[n] / med[SIZES[0]]))
                    print(f"{name:8} {kind:6} nodes={n:5} median {med[n]:.2f} ms p99 {p99(xs):.2f} ms", flush=True)
    lines = [
        "# State store: persistence cost per coordinator step",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC with `PYTHONPATH=src python bench/bench_state_store.py "
        f"--commits {args.commits}`.",
        "",
        f"Machine: {cpu_model()}, 2 logical cores shared with other work; Python {platform.python_version()}; "
        f"one virtual disk for both backends (every commit fsyncs); 1-minute load average {load:.1f} at the start.",
        "",
        "Goal: the cost of a durable step stays within 2x between 50 and 4,200 nodes (and as many leases).",
        "",
        "| backend | step | nodes (and leases) | rows per commit | median ms | p99 ms | commits | median vs 50 nodes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, kind, n, nrows, med, tail, count, ratio in rows:
        lines.append(f"| {name} | {kind} | {n:,} | {nrows} | {med:.2f} | {tail:.2f} | {count} | {ratio:.2f}x |")
    lines += ["", "Steps: *lease* = meta + 1 node row + 1 lease upsert or delete (alternating) + 1 event; *upload* = "
              "meta + 1 node row + 1 lease delete + 1 new buffered-update row + 1 update-log row + 1 event. Each "
              "store was first filled with N nodes, N leases and N update-log rows; the two sizes were measured "
              f"in alternating blocks of {BLOCK} commits.", ""]
    lines += [f"- {note}" for note in notes]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
