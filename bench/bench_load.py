"""Coordinator load benchmark: N simulated nodes over real HTTP against a `trainnet coordinator` subprocess.

    PYTHONPATH=src python bench/bench_load.py --nodes 50 500 4200 --db sqlite --json bench/results/load_sqlite.json
    PYTHONPATH=src python bench/bench_load.py --nodes 50 500 4200 --db postgresql --json bench/results/load_pg.json
    PYTHONPATH=src python bench/bench_load.py --report bench/results/load_*.json > bench/results/load.md

For every N a fresh coordinator (fresh stores) is started with a tiny run (bench/load/coord.py: 1-layer GPT,
q2 uploads, budget never reached, per-address and per-node rate limits off because every client is 127.0.0.1,
verification off because the uploads are synthetic). One asyncio process then registers N nodes with real
ed25519 keys, and runs them for --seconds: lease, heartbeat when half of the remaining lease has passed (the
real worker's rule), upload a valid q2 update of the run's model after a task time drawn from --task-s.
First leases are spread over --stagger-s; latencies and rates are taken after that warm-up.

--db: `sqlite` (a file in a temporary folder), `postgresql` (a throwaway server, trainnet/devservers/postgres.py), or
`postgresql://user@host:port` (an existing server: a fresh database is created per N).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from load.coord import CoordinatorProc, free_port, write_run  # noqa: E402
from load.http import MiniHttp  # noqa: E402
from load.report import render, summarize  # noqa: E402
from load.swarm import Swarm  # noqa: E402


@contextlib.contextmanager
def database(spec: str) -> Iterator[Any]:
    """Yields a function n -> (state URL, folder) giving a fresh store per level."""
    if spec == "sqlite":
        yield lambda n, tmp: f"sqlite:///{tmp / 'state' / 'coordinator.db'}"
        return
    if spec == "postgresql":
        from trainnet.devservers.postgres import postgres_server

        with postgres_server() as base:
            yield _pg_factory(base)
        return
    if spec.startswith(("postgresql://", "postgres://")):
        yield _pg_factory(spec.rstrip("/"))
        return
    raise SystemExit(f"--db must be sqlite, postgresql or a postgresql:// URL, not {spec!r}")


def _pg_factory(base: str) -> Any:
    import psycopg

    def make(n: int, tmp: Path) -> str:
        name = f"loadbench_{n}_{os.getpid()}_{int(time.time())}"
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{base}/{name}"
    return make


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def operator_status(http: MiniHttp, token: str) -> dict[str, Any]:
    status, _, body = await http.request("GET", "/v1/operator/status?limit=1",
                                         headers={"Authorization": f"Bearer {token}"})
    return json.loads(body) if status == 200 else {"error": status}


async def level(n: int, args: argparse.Namespace, db_url: str, tmp: Path) -> dict[str, Any]:
    run = write_run(tmp, lease_s=args.lease_s, grace_s=args.grace_s)
    coord = CoordinatorProc(run, free_port(), db_url, str(tmp / "blobs"), tmp / "coordinator.log",
                            extra=["--aggregators", str(args.aggregators)], switch_interval_s=args.switch_interval)
    try:
        info = coord.wait_ready(120.0)
        token = coord.operator_token()
        http = MiniHttp("127.0.0.1", coord.port, args.connections, args.timeout)
        swarm = Swarm(http, info, n, tuple(args.task_s), seed=args.seed)
        reg_s = await swarm.register_all(args.register_concurrency)
        reg_samples, swarm.samples = swarm.samples, []
        print(f"  N={n}: {n} registered in {reg_s:.1f}s", flush=True)
        start_stats, start_cpu = coord.proc_stats(), cpu_self()
        window: dict[str, Any] = {}

        async def sample_window() -> None:  # CPU of both processes over the measured window only
            await asyncio.sleep(args.stagger_s)
            window["coord0"], window["self0"], window["t0"] = coord.proc_stats(), cpu_self(), time.monotonic()

        sampler = asyncio.create_task(sample_window())
        await swarm.run(args.seconds, args.stagger_s)
        await sampler
        window["coord1"], window["self1"], window["t1"] = coord.proc_stats(), cpu_self(), time.monotonic()
        op = await operator_status(http, token)
        await http.close()
        out = summarize(n, reg_s, reg_samples, swarm.samples, args.stagger_s, args.seconds, window, op)
        out["coordinator_cpu_s_total"] = window["coord1"]["cpu_s"] - start_stats["cpu_s"]
        out["loadgen_cpu_s_total"] = cpu_self() - start_cpu
        out["command"] = " ".join(coord.command[1:]).replace(str(tmp), "$TMP")
        return out
    finally:
        coord.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[50, 500, 4200])
    ap.add_argument("--db", default="sqlite")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--report", nargs="+", default=None, help="print the Markdown table of these JSON files")
    ap.add_argument("--seconds", type=float, default=240.0, help="the steady phase, warm-up included")
    ap.add_argument("--stagger-s", type=float, default=120.0, help="first leases spread over this (= warm-up)")
    ap.add_argument("--task-s", type=float, nargs=2, default=[60.0, 180.0], help="task time, uniform in [a, b]")
    ap.add_argument("--lease-s", type=float, default=120.0)
    ap.add_argument("--grace-s", type=float, default=30.0)
    ap.add_argument("--aggregators", type=int, default=1)
    ap.add_argument("--connections", type=int, default=256, help="client connection pool (server cap: 512)")
    ap.add_argument("--register-concurrency", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=10.0, help="client timeout per request, pool wait included")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="diagnostic: run the coordinator with sys.setswitchinterval(S) (Python's default: 0.005)")
    args = ap.parse_args()
    if args.report:
        docs = [json.loads(Path(p).read_text()) for p in args.report]
        print(render(docs))
        return
    doc: dict[str, Any] = {
        "argv": sys.argv[1:], "db": args.db, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_start": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "report")}, "levels": []}
    with database(args.db) as make_db:
        for n in args.nodes:
            with tempfile.TemporaryDirectory(prefix=f"loadbench-{n}-") as d:
                tmp = Path(d)
                print(f"N={n} ({args.db})", flush=True)
                before = os.getloadavg()
                res = asyncio.run(level(n, args, make_db(n, tmp), tmp))
                res["loadavg_before"] = before
                res["loadavg_after"] = os.getloadavg()
                doc["levels"].append(res)
                print(json.dumps({k: v for k, v in res.items() if k in ("nodes", "register_s", "lease",
                                                                         "accepted_per_s", "errors")}), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(doc, indent=1))
    print(render([doc]))


if __name__ == "__main__":
    main()
