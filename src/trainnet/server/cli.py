"""`trainnet coordinator`, `trainnet aggregator` and `trainnet tokens`: the control and data plane processes.

    trainnet coordinator --run run.toml --state ./state                     # embedded: SQLite + files + 1 aggregator
    trainnet coordinator --run run.toml --db postgresql://u@h/db --blobs s3://bucket/run1 --aggregators 0
    trainnet aggregator --run run.toml --db postgresql://u@h/db --blobs s3://bucket/run1   # run several
    trainnet tokens issue --coordinator http://host:8470 --operator-token T --max-keys 4

run.toml is a RunConfig TOML (same format as bench/standard.toml); the token budget is `sim.tokens`, the upload
codec `sim.codec`, the data plane `[aggregate]`. Restarting with the same stores continues the run; a second
coordinator on the same stores refuses to start.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trainnet.config import ConfigError, load_config


def read_keys(path: Path) -> tuple[str, ...]:
    """A key file: one hex public key or node id per line; blank lines and # comments skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            out.append(line)
    return tuple(sorted(set(out)))


def _config(run_path: str, overrides: tuple[str, ...], extra: list[str] = ()):
    try:
        return load_config(run_path, list(overrides) + list(extra))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("coordinator")
@click.option("--run", "run_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="RunConfig TOML (model, data, consensus; sim.tokens = budget, sim.codec = upload codec).")
@click.option("--state", "state_dir", type=click.Path(file_okay=False),
              help="State directory: SQLite database and blob files (the embedded default).")
@click.option("--db", default=None, help="State store URL: sqlite:///path.db or postgresql://... (default: in --state).")
@click.option("--blobs", default=None, help="Blob store: a path, file:///path or s3://bucket/prefix (default: in --state).")
@click.option("--aggregators", default=1, show_default=True, type=click.IntRange(0, 64),
              help="In-process aggregator threads (0: external `trainnet aggregator` processes merge).")
@click.option("--shards", default=None, type=click.IntRange(1, 4096), help="Parameter ranges (sets aggregate.shards).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8470, show_default=True, type=int)
@click.option("--join-token", default=None, envvar="TRAINNET_JOIN_TOKEN",
              help="A shared join token (at most --join-token-max-keys keys); per-participant: `trainnet tokens issue`.")
@click.option("--join-token-max-keys", default=64, show_default=True, type=click.IntRange(1, 10**6))
@click.option("--operator-token", default=None, envvar="TRAINNET_OPERATOR_TOKEN",
              help="Token of the operator view (default: made once and kept in the state store; printed at start).")
@click.option("--register-pow-bits", default=0, show_default=True, type=click.IntRange(0, 32),
              help="Proof of work a new identity must show at registration (leading zero bits).")
@click.option("--register-per-ip", default=30.0, show_default=True, type=click.FloatRange(0),
              help="New identities per minute from one address (0: no limit).")
@click.option("--ip-rate", default=10.0, show_default=True, type=click.FloatRange(0),
              help="Unsigned requests per second from one address (0: no limit).")
@click.option("--set", "overrides", multiple=True, help="Config override section.field=value (repeatable).")
@click.option("--rate", default=20.0, show_default=True, type=float, help="Requests/s per node (0: off).")
@click.option("--burst", default=40.0, show_default=True, type=float)
@click.option("--keep-versions", default=16, show_default=True, type=int)
@click.option("--log-level", default="info", show_default=True)
@click.option("--verify-rate", default=None, type=float,
              help="Share of accepted tasks recomputed (sets consensus.verify_rate; 0 turns verification off).")
@click.option("--aggregator", "rule", default=None, help="Aggregation rule (sets consensus.aggregator; 'mean' turns "
                                                          "robust aggregation off).")
@click.option("--verify-device", default="cpu", show_default=True,
              help="Device the built-in verifier recomputes on ('cuda' for a bf16 run; see docs/SECURITY.md).")
@click.option("--verifiers", type=click.Choice(["coordinator", "nodes"]), default="coordinator", show_default=True,
              help="Who recomputes audits: this server, or designated verifier nodes (`trainnet verifier`).")
@click.option("--verifier-keys", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --verifiers nodes: file of the verifier nodes' public keys (hex) or node ids.")
@click.option("--eval-interval", default=2.0, show_default=True, type=float,
              help="Seconds between held-out evaluations of new model versions.")
@click.option("--max-connections", default=512, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Open connections at most; more are closed before a byte is read.")
@click.option("--max-connections-per-address", default=256, show_default=True, type=click.IntRange(0, 1_000_000),
              help="Open connections from one client address at most (0: no limit; behind a proxy).")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a client has to send a request's line and headers (slowloris).")
@click.option("--body-timeout", default=120.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a client has to send a request's body.")
@click.option("--tracker", type=click.Choice(["none", "tensorboard", "wandb"]), default="none", show_default=True,
              help="Also log each version's held-out loss to TensorBoard or W&B (offline) under --state.")
def coordinator_cmd(run_path, state_dir, db, blobs, aggregators, shards, host, port, join_token, join_token_max_keys,
                    operator_token, register_pow_bits, register_per_ip, ip_rate, overrides, rate, burst, keep_versions, log_level, verify_rate,
                    rule, verify_device, verifiers, verifier_keys, eval_interval, max_connections=512,
                    max_connections_per_address=256, header_timeout=10.0, body_timeout=120.0, tracker="none"):
    """Run the coordinator's HTTP server (protocol 2.0)."""
    from trainnet.server.limits import ServerLimits
    from trainnet.server.serve import serve
    from trainnet.server.service import StoreMismatch
    from trainnet.store.state import StoreError

    extra = []
    if verify_rate is not None:
        extra.append(f"consensus.verify_rate={verify_rate}")
    if rule is not None:
        extra.append(f"consensus.aggregator={json.dumps(rule)}")
    if shards is not None:
        extra.append(f"aggregate.shards={shards}")
    cfg = _config(run_path, overrides, extra)
    limits = ServerLimits(rate_per_s=rate, burst=burst, keep_versions=keep_versions, verify_device=verify_device,
                          verifiers=verifiers, verifier_keys=read_keys(Path(verifier_keys)) if verifier_keys else (),
                          operator_token=operator_token, join_token=join_token,
                          join_token_max_keys=join_token_max_keys, register_pow_bits=register_pow_bits,
                          register_per_ip_per_min=register_per_ip, ip_rate_per_s=ip_rate)
    limits.max_connections, limits.header_timeout_s, limits.body_timeout_s = \
        max_connections, header_timeout, body_timeout
    limits.max_connections_per_address = max_connections_per_address
    try:
        serve(cfg, Path(state_dir) if state_dir else None, host, port, limits, log_level, eval_interval, db, blobs,
              aggregators, echo=lambda *a, **k: click.echo(*a), tracker=tracker)
    except (StoreMismatch, StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command("aggregator")
@click.option("--run", "run_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--db", required=True, help="The coordinator's state store URL.")
@click.option("--blobs", required=True, help="The coordinator's blob store URL.")
@click.option("--set", "overrides", multiple=True)
@click.option("--threads", default=0, type=click.IntRange(0, 256), help="torch threads (0: torch default).")
@click.option("--log-level", default="info", show_default=True)
def aggregator_cmd(run_path, db, blobs, overrides, threads, log_level):
    """Claim and run merge tasks (a parameter range of a merge each) until stopped."""
    import torch

    from trainnet.server.serve import run_aggregator
    from trainnet.server.service import StoreMismatch

    if threads:
        torch.set_num_threads(threads)
    try:
        sys.exit(run_aggregator(_config(run_path, overrides), db, blobs, log_level=log_level))
    except StoreMismatch as exc:
        raise click.ClickException(str(exc)) from None


@click.group("tokens")
def tokens_cmd():
    """Per-participant join tokens (each with a key quota; a ban revokes the token it came from and bans its other keys)."""


@tokens_cmd.command("issue")
@click.option("--coordinator", default="http://127.0.0.1:8470", show_default=True)
@click.option("--operator-token", required=True, envvar="TRAINNET_OPERATOR_TOKEN")
@click.option("--max-keys", default=1, show_default=True, type=click.IntRange(1, 10**6))
@click.option("--label", default="", help="A note for the operator view (who got it).")
def issue_cmd(coordinator, operator_token, max_keys, label):
    """Issue a join token and print it (shown once)."""
    import httpx

    r = httpx.post(coordinator.rstrip("/") + "/v1/operator/tokens", json={"max_keys": max_keys, "label": label},
                   headers={"Authorization": f"Bearer {operator_token}"}, timeout=30)
    if r.status_code != 200:
        raise click.ClickException(f"HTTP {r.status_code}: {r.text[:300]}")
    click.echo(r.json()["token"])
