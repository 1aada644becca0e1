"""Run the coordinator over HTTP with uvicorn.

    serve(load_config("run.toml"), Path("state"), host="127.0.0.1", port=8470)

SIGINT/SIGTERM stop it gracefully (the tick task ends, the store is closed); SIGKILL at any
instant is also safe: the store is consistent after every committed step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from trainnet.config import RunConfig, defence_report
from trainnet.coordinator.app import create_app
from trainnet.coordinator.limits import ServerLimits
from trainnet.coordinator.service import CoordinatorService


def read_allow_keys(path: Path) -> set[str]:
    """An allow-list file: one hex public key or node id per line; blank lines and # comments skipped."""
    keys = set()
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            keys.add(line)
    return keys


def serve(cfg: RunConfig, state_dir: Path, host: str = "127.0.0.1", port: int = 8470,
          limits: ServerLimits | None = None, join_token: str | None = None,
          allow_keys: set[str] | None = None, log_level: str = "info", tracker: str | None = None,
          eval_interval_s: float = 2.0) -> None:
    """Load (or create) the store, then serve until stopped."""
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for warning in defence_report(cfg)["off"]:
        logging.getLogger("trainnet.coordinator").warning("defence off: %s", warning)
    svc = CoordinatorService(cfg, state_dir, limits, eval_interval_s=eval_interval_s, tracker=tracker)
    app = create_app(svc, join_token=join_token, allow_keys=allow_keys)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_keep_alive=30, timeout_graceful_shutdown=10)
    uvicorn.Server(config).run()
