"""`trainnet coordinator`: serve a run over HTTP with durable state.

    trainnet coordinator --run run.toml --state ./state --host 127.0.0.1 --port 8470 \\
        [--join-token T] [--allow-keys keys.txt] [--set consensus.quorum=2] [--max-update-mb 64]
        [--verify-rate 0.14 --verify-device cpu --reveal-s 600]
        [--verifiers nodes --verifier-keys verifiers.txt --audit-claim-s 0]

run.toml is a RunConfig TOML (same format as bench/standard.toml); the run's token budget is
`sim.tokens`, the upload codec `sim.codec`. Restarting with the same --state continues the run.
"""

from __future__ import annotations

from pathlib import Path

import click

from trainnet.config import ConfigError, load_config
from trainnet.coordinator.limits import ServerLimits


@click.command("coordinator")
@click.option("--run", "run_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="RunConfig TOML (model, data, consensus; sim.tokens = budget, sim.codec = upload codec).")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), required=True,
              help="State directory (SQLite + checkpoints + update files); reused on restart.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8470, show_default=True, type=int)
@click.option("--join-token", default=None, envvar="TRAINNET_JOIN_TOKEN", help="Required at /v1/register.")
@click.option("--allow-keys", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File of allowed public keys (hex) or node ids, one per line.")
@click.option("--set", "overrides", multiple=True, help="Config override section.field=value (repeatable).")
@click.option("--max-update-mb", default=64.0, show_default=True, type=float)
@click.option("--rate", default=20.0, show_default=True, type=float, help="Requests/s per node (0: off).")
@click.option("--burst", default=40.0, show_default=True, type=float)
@click.option("--keep-versions", default=16, show_default=True, type=int)
@click.option("--log-level", default="info", show_default=True)
@click.option("--tracker", type=click.Choice(["none", "tensorboard", "wandb"]), default="none", show_default=True,
              help="Also log the validation curve to TensorBoard or (offline) Weights & Biases.")
@click.option("--verify-rate", default=None, type=float,
              help="Share of accepted tasks recomputed by the verifier (sets consensus.verify_rate).")
@click.option("--verify-device", default="cpu", show_default=True,
              help="Device the verifier recomputes on ('cuda' for a bf16 run; see docs/SECURITY.md).")
@click.option("--reveal-s", default=0.0, show_default=True, type=float,
              help="Seconds an audited worker has to reveal its residuals (0: 10 x consensus.lease_s).")
@click.option("--verifiers", type=click.Choice(["coordinator", "nodes"]), default="coordinator", show_default=True,
              help="Who recomputes audits: this server, or designated verifier nodes (`trainnet verifier`).")
@click.option("--verifier-keys", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --verifiers nodes: file of the verifier nodes' public keys (hex) or node ids, one per line.")
@click.option("--audit-claim-s", default=0.0, show_default=True, type=float,
              help="Seconds a verifier node's audit claim lasts per H steps (0: consensus.lease_s).")
@click.option("--eval-interval", default=2.0, show_default=True, type=float,
              help="Seconds between held-out evaluations of new model versions.")
def coordinator_cmd(run_path: str, state_dir: str, host: str, port: int, join_token: str | None,
                    allow_keys: str | None, overrides: tuple[str, ...], max_update_mb: float, rate: float,
                    burst: float, keep_versions: int, log_level: str, tracker: str, verify_rate: float | None,
                    verify_device: str, reveal_s: float, verifiers: str, verifier_keys: str | None,
                    audit_claim_s: float, eval_interval: float) -> None:
    """Run the coordinator's HTTP server (protocol 1.2)."""
    from trainnet.coordinator.server import read_allow_keys, serve
    from trainnet.coordinator.service import StoreMismatch

    try:
        extra = [f"consensus.verify_rate={verify_rate}"] if verify_rate is not None else []
        cfg = load_config(run_path, list(overrides) + extra)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    vkeys = tuple(sorted(read_allow_keys(Path(verifier_keys)))) if verifier_keys else ()
    limits = ServerLimits(max_update_bytes=int(max_update_mb * (1 << 20)), rate_per_s=rate, burst=burst,
                          keep_versions=keep_versions, verify_device=verify_device, reveal_s=reveal_s,
                          verifiers=verifiers, verifier_keys=vkeys, audit_claim_s=audit_claim_s)
    keys = read_allow_keys(Path(allow_keys)) if allow_keys else None
    try:
        serve(cfg, Path(state_dir), host, port, limits, join_token, keys, log_level, tracker, eval_interval)
    except (StoreMismatch, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
