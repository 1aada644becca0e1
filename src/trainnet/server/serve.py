"""Serve a run over HTTP (uvicorn), or run data-plane processes beside it.

    serve(cfg, state_dir=Path("state"), port=8470)                       # the embedded default: SQLite + files
    serve(cfg, db="postgresql://...", blobs="s3://bucket/run1", aggregators=0)   # scale-out control plane
    run_aggregator(cfg, db=..., blobs=...)                               # one more data-plane process

SIGINT/SIGTERM stop a server gracefully; SIGKILL at any instant is also safe: nothing is acknowledged before
it is durable, and every merge is deterministic, so a restarted coordinator and its aggregators carry on.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from trainnet.config import RunConfig, defence_report
from trainnet.server.app import create_app
from trainnet.server.http_guard import guarded_h11
from trainnet.server.limits import ServerLimits
from trainnet.server.runtime import Runtime, shard_env, state_urls

log = logging.getLogger("trainnet.coordinator")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(cfg: RunConfig, state_dir: Path | None = None, host: str = "127.0.0.1", port: int = 8470,
          limits: ServerLimits | None = None, log_level: str = "info", eval_interval_s: float = 2.0,
          db: str | None = None, blobs: str | None = None, aggregators: int = 1,
          echo: Any = print, tracker: str | None = None) -> None:
    """Open (or create) the run's stores, then serve until stopped."""
    setup_logging(log_level)
    limits = limits or ServerLimits()
    for warning in defence_report(cfg)["off"]:
        log.warning("defence off: %s", warning)
    state_url, blob_url = state_urls(state_dir, db, blobs)
    rt = Runtime.open(cfg, state_url, blob_url, limits, aggregators=aggregators, eval_interval_s=eval_interval_s)
    from trainnet.dashboard.trackers import make_tracker

    track = make_tracker(tracker, Path(state_dir) if state_dir else Path.cwd())
    if rt.evaluator is not None:
        rt.evaluator.tracker = track
    app = create_app(rt)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_keep_alive=15, timeout_graceful_shutdown=10,
                            http=guarded_h11(limits.max_connections, limits.header_timeout_s, limits.max_header_bytes,
                                             limits.max_connections_per_address),
                            limit_concurrency=limits.max_connections,
                            h11_max_incomplete_event_size=limits.max_header_bytes)
    server = uvicorn.Server(config)

    def announce() -> None:  # once the socket listens: where to look, with the operator's token
        for _ in range(600):
            if server.started:
                shown = host if host not in ("0.0.0.0", "::") else "127.0.0.1"
                echo(f"coordinator ready: run {cfg.name}, state {state_url}, blobs {blob_url}, "
                     f"{aggregators} in-process aggregator(s)\n"
                     f"dashboard: http://{shown}:{server.servers[0].sockets[0].getsockname()[1]}/?token="
                     f"{rt.api.operator_token}", flush=True)
                return
            time.sleep(0.05)

    rt.start()
    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run()
    finally:
        track.close()


def run_aggregator(cfg: RunConfig, db: str, blobs: str, poll_s: float = 0.2, log_level: str = "info",
                   name: str | None = None) -> int:
    """A data-plane process: claim merge tasks of this run from the state store until stopped."""
    from trainnet.aggregate.runner import Aggregator
    from trainnet.server.runspec import RunSpec
    from trainnet.server.service import StoreMismatch, default_owner
    from trainnet.store.blobs import open_blob_store
    from trainnet.store.state import open_state_store

    setup_logging(log_level)
    spec = RunSpec.load(cfg)
    state, store = open_state_store(db), open_blob_store(blobs)
    fp = state.get_meta("fingerprint")
    if fp is not None and fp != spec.fingerprint():
        raise StoreMismatch(f"{db} holds another run's state: start the aggregator with the coordinator's run config")
    agg = Aggregator(state, shard_env(spec, store), name or f"{default_owner()}:aggregator", spec.ccfg.merge_lease_s)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("aggregator %s serving run %s (%s, %s)", agg.owner, cfg.name, db, blobs)
    agg.run(stop, poll_s)
    state.close()
    store.close()
    return 0


__all__ = ["run_aggregator", "serve", "state_urls"]
