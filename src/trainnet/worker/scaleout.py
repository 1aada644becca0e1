"""`trainnet demo --scale-out`: the production topology on one machine — PostgreSQL for the state (when it is
installed; SQLite otherwise, and it says so), an S3-speaking object store for every byte of model and update,
two aggregator processes merging two parameter shards, the coordinator, and the workers.

    trainnet demo --scale-out --json -          # the usual summary, then where the bytes went, as JSON

The object store is moto's S3 server behind a byte-counting front (devservers/s3_proxy.py), so the figures
are measured at the store: what it received (worker uploads through presigned URLs, aggregator output) and
what it served. The coordinator only decides: it should receive zero update bytes here
(`coordinator_update_bytes_in`). Needs the `scale` extras: boto3, moto[server] and psycopg.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUCKET = "trainnet-demo"
SHARDS = 2


@dataclass
class Stack:
    db_url: str
    db_kind: str
    blob_url: str
    env: dict[str, str]
    proxy: Any
    notes: list[str] = field(default_factory=list)


def _create_database(base_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{base_url}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"


@contextlib.contextmanager
def scale_out_stack(out: Path, run_name: str) -> Iterator[Stack]:
    """Start the state store and the object store (stopped on exit); yields their URLs and the environment
    the coordinator and aggregators need to reach the store."""
    try:
        import boto3

        from trainnet.devservers.s3 import moto_s3_server
        from trainnet.devservers.s3_proxy import CountingProxy
    except ImportError as exc:
        raise RuntimeError(f"--scale-out needs boto3 and moto[server] ({exc}): pip install 'trainnet[scale]'") from exc
    from trainnet.devservers.postgres import find_pg_bin, postgres_server

    with contextlib.ExitStack() as es:
        notes = []
        if find_pg_bin() is not None:
            base = es.enter_context(postgres_server())
            db_url, db_kind = _create_database(base, "trainnet"), "postgresql"
        else:
            (out / "coordinator").mkdir(parents=True, exist_ok=True)
            db_url, db_kind = f"sqlite:///{(out / 'coordinator' / 'state.db').resolve()}", "sqlite"
            notes.append("PostgreSQL is not installed (initdb/pg_ctl not found): the state is in SQLite instead "
                         "(.ci/system-deps installs PostgreSQL)")
        s3 = es.enter_context(moto_s3_server())
        boto3.client("s3", **s3.client_kwargs()).create_bucket(Bucket=BUCKET)  # straight to the store: not counted
        proxy = es.enter_context(CountingProxy(s3.endpoint_url))
        env = s3.env() | {"AWS_ENDPOINT_URL": proxy.url}
        yield Stack(db_url, db_kind, f"s3://{BUCKET}/{run_name}", env, proxy, notes)


def start_scale_out(cluster: Any, stack: Stack, run_toml: Path) -> None:
    """The aggregators (one per shard; either can claim either shard's tasks), then the coordinator."""
    for i in range(SHARDS):
        cluster.add_service(f"aggregator{i}", ["aggregator", "--run", str(run_toml), "--db", stack.db_url,
                                               "--blobs", stack.blob_url, "--threads", "1"]).start()
    cluster.start_coordinator()


def coordinator_args(stack: Stack) -> list[str]:
    return ["--db", stack.db_url, "--blobs", stack.blob_url, "--aggregators", "0"]


def where_bytes_went(cluster: Any, stack: Stack, figures: dict[str, Any], echo: Any) -> dict[str, Any]:
    """Print and return the scale-out figures (measured: the coordinator's own byte counters, the object
    store's front, the workers' task logs)."""
    traffic = cluster.operator_status().get("traffic") or {}
    store = stack.proxy.counts()
    by = store["by_method"]
    res = {
        "db": stack.db_kind, "db_url": stack.db_url, "blob_store": "s3", "blob_url": stack.blob_url,
        "aggregator_shards": SHARDS, "coordinator_update_bytes_in": int(traffic.get("update_in", 0)),
        "coordinator_bytes_out": {k: v for k, v in traffic.items() if k != "update_in"},
        "object_store_bytes_in": store["bytes_in"], "object_store_bytes_out": store["bytes_out"],
        "object_store_requests": store["requests"],
        "object_store_by_method": {m: {"requests": r[0], "bytes_in": r[1], "bytes_out": r[2]} for m, r in by.items()},
        "download_bits_per_param": figures.get("download_bits_per_param"),
        "final_val_loss": figures.get("final_val_loss"), "notes": stack.notes,
    }
    from trainnet.worker.status import human_bytes

    echo(f"-- scale-out: state in {stack.db_kind} ({stack.db_url}), bytes in S3 ({stack.blob_url}), "
         f"{SHARDS} aggregator processes")
    echo(f"   coordinator received {human_bytes(res['coordinator_update_bytes_in'])} of updates; the object store "
         f"received {human_bytes(store['bytes_in'])} and served {human_bytes(store['bytes_out'])} in "
         f"{store['requests']:,} requests ("
         + ", ".join(f"{m} {r[0]:,}" for m, r in sorted(by.items())) + ")")
    if res["download_bits_per_param"] is not None:
        echo(f"   workers downloaded {res['download_bits_per_param']:.2f} bits/param of model per task "
             f"(deltas, or a full version to join)")
    for n in stack.notes:
        echo(f"   note: {n}")
    return res
