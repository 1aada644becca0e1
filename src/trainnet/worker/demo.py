"""`trainnet demo`: a whole TrainNet run on this machine in one command (coordinator + workers).

    trainnet demo                          # 3 workers, ~2 minutes on 2 CPU cores
    trainnet demo --workers 4 --chaos      # SIGKILL and restart a random worker every few seconds
    trainnet demo --tokens 200000 --out /tmp/tn-demo
    trainnet demo --scale-out --json -     # PostgreSQL + S3 + 2 aggregator shards (worker/scaleout.py)

Every process is real: the coordinator (`trainnet coordinator`) and the workers (`trainnet worker`)
talk HTTP on 127.0.0.1 with signed requests and compressed updates. The data is the Python standard
library (capped), the model a small byte-level GPT. At the end the demo prints the measured training
loss against tokens, bytes, accepted/rejected updates with reasons, the checkpoint path and text
sampled from the final model. All child processes are stopped on exit and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from trainnet.worker.procs import LocalCluster, write_toml
from trainnet.worker.report import print_summary


def demo_config(tokens: int, workers: int, seed: int, chaos: bool, codec: str, tiny: bool) -> dict[str, Any]:
    """The run.toml the demo's coordinator reads (a trainnet RunConfig)."""
    model = ({"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32} if tiny
             else {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64})
    return {
        "name": f"demo-{seed}",
        "model": model,
        "data": {"shard_bytes": 65536, "val_every": 10, "max_bytes": 2_000_000 if tiny else 4_000_000},
        "inner": {"batch_size": 8, "lr": 3e-3},
        "consensus": {"h": 5 if tiny else 30, "quorum": max(1, min(workers, 3)), "grace_s": 5.0,
                      # Short leases so that a killed worker's shard comes back within the demo.
                      "lease_s": 10.0 if chaos else 30.0, "max_staleness": 8, "outer_lr": 0.7,
                      "outer_momentum": 0.9},
        "sim": {"tokens": tokens, "seed": seed, "codec": codec, "workers": workers},
    }


class _Interrupted(Exception):
    pass


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise _Interrupted()


def run_demo(out: Path, workers: int, tokens: int, chaos: bool, port: int, seed: int, timeout: float,
             codec: str, tiny: bool = False, echo: Any = click.echo, sample_tokens: int = 240,
             scale_out: bool = False, json_out: dict[str, Any] | None = None) -> int:
    """Run the demo; returns an exit status (0 when the run finished and the summary was printed). The
    summary's figures go into `json_out` when given."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(tokens, workers, seed, chaos, codec, tiny)
    if scale_out:
        # Two parameter ranges, each merged by its own aggregator: the demo's model is small, so its statistics
        # blocks (and the shards made of them) are too (aggregate.block; 1M parameters by default).
        cfg["aggregate"] = {"shards": 2, "block": 8192}
    run_toml = write_toml(out / "run.toml", cfg)
    rng = random.Random(seed)
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    t0 = time.monotonic()
    try:
        with contextlib.ExitStack() as es:
            stack = None
            if scale_out:
                from trainnet.worker import scaleout

                echo("starting PostgreSQL and an S3 object store...")
                stack = es.enter_context(scaleout.scale_out_stack(out, cfg["name"]))
            cluster = es.enter_context(LocalCluster(
                out, run_toml, workers=workers, port=port, worker_args=["--threads", "1"],
                coordinator_args=scaleout.coordinator_args(stack) if stack else None,
                env=stack.env if stack else None))
            echo(f"coordinator on {cluster.url} (state {out / 'coordinator'}, logs {out / 'logs'})")
            if stack:
                scaleout.start_scale_out(cluster, stack, run_toml)
            else:
                cluster.start_coordinator()
            # Importing torch and the web stack takes seconds on idle cores, a minute or more on a busy machine.
            info = cluster.wait_ready(timeout=min(timeout, 300.0))
            echo(f"run {info.get('run_id')}: model {info.get('model')}, codec {info.get('codec')}, "
                 f"{info.get('data', {}).get('shards', '?')} shards, ready after {time.monotonic() - t0:.0f}s; "
                 f"starting {workers} workers (each loads torch and the model first: a few seconds)")
            cluster.start_workers()
            status = _watch(cluster, t0, timeout, chaos, rng, echo)
            if status is None:
                echo(f"timed out after {timeout:.0f}s; logs in {out / 'logs'}")
                return 1
            figures = print_summary(cluster, status, out, time.monotonic() - t0, echo, sample_tokens=sample_tokens)
            if stack:
                figures |= scaleout.where_bytes_went(cluster, stack, figures, echo)
            if json_out is not None:
                json_out.update(figures)
            return 0
    except (_Interrupted, KeyboardInterrupt):
        echo("interrupted: stopping all processes")
        return 130
    except RuntimeError as exc:  # a server failed to start
        echo(f"error: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)


def _watch(cluster: LocalCluster, t0: float, timeout: float, chaos: bool, rng: random.Random,
           echo: Any) -> dict[str, Any] | None:
    """Poll /v1/status until the run is done (or the timeout); with chaos, SIGKILL and restart workers."""
    next_chaos = time.monotonic() + rng.uniform(4.0, 8.0)
    last_print, status = 0.0, None
    while time.monotonic() - t0 < timeout:
        if not cluster.coordinator.alive:
            raise RuntimeError(f"coordinator exited:\n{cluster.coordinator.log_tail()}")
        try:
            status = cluster.status()
        except Exception:  # a transient error while polling is not fatal to the demo
            status = None
        if status is not None and status.get("done"):
            return status
        now = time.monotonic()
        if chaos and now >= next_chaos:
            i = rng.randrange(len(cluster.workers))
            w = cluster.workers[i]
            w.signal(signal.SIGKILL)
            if w.proc is not None:
                w.proc.wait(5)
            w.start()
            echo(f"[chaos] {now - t0:5.1f}s SIGKILL worker{i}, restarted it (start #{w.starts})")
            next_chaos = now + rng.uniform(4.0, 8.0)
        for i, w in enumerate(cluster.workers):
            if not w.alive and w.returncode not in (None, 0):
                echo(f"worker{i} exited with {w.returncode}; restarting it\n{w.log_tail(5)}")
                w.start()
        if status is not None and now - last_print >= 5.0:
            last_print = now
            echo(f"{now - t0:5.1f}s  v{status.get('model_version')}  tokens {status.get('tokens', 0):,}/"
                 f"{status.get('tokens_target', 0):,}  accepted {status.get('updates_accepted')} "
                 f"rejected {status.get('updates_rejected')}  nodes {status.get('nodes')}")
        time.sleep(0.5)
    return None


@click.command("demo")
@click.option("--workers", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--tokens", type=click.IntRange(min=1000), default=3_000_000, show_default=True,
              help="Accepted-token budget of the run (sized for ~2 minutes on 2 CPU cores).")
@click.option("--chaos", is_flag=True, help="SIGKILL and restart a random worker every 4-8 s (seeded).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="trainnet-demo", show_default=True,
              help="Where the run's state, logs, worker state and final checkpoint go.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0: a free port.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--codec", default="q4", show_default=True,
              help="Update codec the workers use (q4: 4-bit blocks, ~6.7x smaller than fp32 here).")
@click.option("--timeout", type=click.FloatRange(min=10), default=600.0, show_default=True,
              help="Give up after this many seconds.")
@click.option("--tiny", is_flag=True, help="A much smaller model and task (smoke test).")
@click.option("--scale-out", is_flag=True,
              help="The production topology: PostgreSQL (if installed), an S3 object store, 2 aggregator shards.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), is_flag=False, flag_value="-",
              help="Write the summary's figures as JSON to this file; '-' or no value: to stdout (the rest goes "
                   "to stderr).")
def demo_cmd(workers, tokens, chaos, out_dir, port, seed, codec, timeout, tiny, scale_out, json_path):
    """Run a coordinator and several workers on this machine, then summarise the run."""
    to_stdout = json_path == "-"
    figures: dict[str, Any] = {}
    echo = (lambda msg="": click.echo(msg, err=True)) if to_stdout else click.echo
    code = run_demo(Path(out_dir), workers, tokens, chaos, port, seed, timeout, codec, tiny=tiny, echo=echo,
                    scale_out=scale_out, json_out=figures)
    if json_path and code == 0:
        text = json.dumps(figures, indent=1) + "\n"
        if to_stdout:
            sys.stdout.write(text)
        else:
            Path(json_path).write_text(text)
    sys.exit(code)
