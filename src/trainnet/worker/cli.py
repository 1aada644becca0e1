"""`trainnet worker`: join a run and train until it is done.

    trainnet worker --coordinator http://127.0.0.1:8470 --state ~/.trainnet/worker
    trainnet worker --coordinator https://example.org --state w1 --device cuda --join-token SECRET

Exit status: 0 when the run is done, --max-tasks is reached or the worker was stopped (Ctrl-C /
SIGTERM); 1 when the coordinator stayed unreachable past the retry budget; 3 when it refused this
node (banned, not on the allow-list, bad join token); 5 when --coordinator is not a TrainNet coordinator
(GET /v1/info is not a TrainNet info document: a wrong port or path, or some other web server); 6 when the
run's tasks do not fit this device's memory (an estimate, models/memory.py; --memory-gb sets the capacity).

Multi-GPU node: `torchrun --nproc-per-node K -m trainnet worker ...` trains every task with FSDP2 across the
K local devices as one participant (one key, one lease, one upload; worker/multi.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


@click.command("worker")
@click.option("--coordinator", default="http://127.0.0.1:8470", show_default=True, help="Coordinator base URL.")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="State directory: node key, last model, shard cache, error-feedback residual.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="torch threads (0: torch default).")
@click.option("--max-tasks", type=click.IntRange(min=1), help="Stop after this many tasks.")
@click.option("--join-token", envvar="TRAINNET_JOIN_TOKEN", help="Join token, if the run requires one.")
@click.option("--retry-budget", type=click.FloatRange(min=1.0), default=300.0, show_default=True,
              help="Seconds one request keeps retrying a failing coordinator before giving up.")
@click.option("--quiet", is_flag=True, help="No live status line (log lines only).")
@click.option("--memory-gb", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Device memory to plan tasks against, in GiB (default: measured).")
@click.option("--no-overlap", is_flag=True, help="Upload each update before training the next task even when the "
              "run allows two leases per node.")
def worker_cmd(coordinator, state_dir, device, threads, max_tasks, join_token, retry_budget, quiet, memory_gb,
               no_overlap):
    """Train tasks for a TrainNet coordinator: lease, train locally, upload compressed signed updates."""
    from trainnet.worker.node import Worker, WorkerOptions
    from trainnet.worker.status import StatusLine

    opts = WorkerOptions(coordinator=coordinator, state_dir=Path(state_dir).expanduser(), device=device,
                         threads=threads, max_tasks=max_tasks, join_token=join_token, retry_budget_s=retry_budget,
                         memory_gb=memory_gb, overlap=not no_overlap)
    try:
        with StatusLine(enabled=not quiet and sys.stdout.isatty()) as status:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: one node over K processes
                from trainnet.worker.multi import run_multi

                code = run_multi(opts, status)
            else:
                code = Worker(opts, status=status).run()
    except ValueError as exc:  # e.g. --device cuda without CUDA
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
