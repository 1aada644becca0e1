"""`trainnet simulate`: run the protocol with N virtual workers, or the synchronous baseline.

    trainnet simulate --config bench/standard.toml --dropout 0.3 --json out.json
    trainnet simulate --config bench/standard.toml --algo sync --set sim.seed=2
    trainnet simulate --config bench/security.toml --attack alie --malicious 0.3 --aggregator robust \
        --verify-rate 0.1 --json out.json      # JSON adds banned_nodes, honest_banned, backdoor_asr, ...
    trainnet simulate --config bench/standard.toml --json - | jq .final_val_loss

`--json -` (or a bare `--json`) prints the result as JSON on stdout; the progress bar, warnings and the
summary lines then go to stderr, so stdout is exactly one JSON document.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from trainnet.config import ConfigError, defence_report, load_config


@click.command("simulate")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML run config.")
@click.option("--workers", type=click.IntRange(min=1), help="Number of virtual workers (sim.workers).")
@click.option("--tokens", type=click.IntRange(min=1), help="Accepted-token budget (sim.tokens).")
@click.option("--dropout", type=click.FloatRange(0.0, 0.95), help="Probability a task is lost (sim.dropout).")
@click.option("--seed", type=int, help="Run seed (sim.seed).")
@click.option("--algo", type=click.Choice(["async", "sync"]), help="async protocol or synchronous baseline.")
@click.option("--codec", help="Update codec spec, e.g. fp32 (sim.codec).")
@click.option("--data", "data_path", type=click.Path(), help="Text file or folder (default: Python stdlib).")
@click.option("--attack", help="Attack spec NAME[:key=value,...] from trainnet.sim.attacks (sim.attack).")
@click.option("--malicious", type=click.FloatRange(0.0, 1.0), help="Share of workers that attack (sim.malicious).")
@click.option("--aggregator", help="Aggregation rule spec: mean, robust, median, cclip... (consensus.aggregator).")
@click.option("--verify-rate", type=click.FloatRange(0.0, 1.0),
              help="Share of accepted tasks recomputed by the verifier (consensus.verify_rate).")
@click.option("--non-iid", is_flag=True, default=None, help="Each node trains its own block of shards (sim.iid=false).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), is_flag=False, flag_value="-",
              help="Write the result as JSON to this file; '-' or no value: to stdout (the rest goes to stderr).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any config field.")
@click.option("--quiet", is_flag=True, help="No progress line.")
def simulate_cmd(config_path, workers, tokens, dropout, seed, algo, codec, data_path, attack, malicious,
                 aggregator, verify_rate, non_iid, json_path, overrides, quiet):
    """Simulate a TrainNet run in one process and report measured loss, tokens and bytes."""
    flags = {"sim.workers": workers, "sim.tokens": tokens, "sim.dropout": dropout, "sim.seed": seed,
             "sim.algo": algo, "sim.codec": codec, "data.path": data_path, "sim.attack": attack,
             "sim.malicious": malicious, "consensus.aggregator": aggregator,
             "consensus.verify_rate": verify_rate, "sim.iid": False if non_iid else None}
    sets = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + list(overrides)
    try:
        cfg = load_config(config_path, sets)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    from trainnet.data.corpus import CorpusError
    from trainnet.sim.progress import progress_line
    from trainnet.sim.simulator import simulate
    from trainnet.sim.sync import run_sync

    run = run_sync if cfg.sim.algo == "sync" else simulate
    if cfg.sim.algo != "sync":
        for warning in defence_report(cfg)["off"]:
            click.echo(f"WARNING: {warning}", err=True)
    to_stdout = json_path == "-"
    out = sys.stdout
    # With the JSON on stdout, everything else written to stdout while running (the progress bar, the
    # summary, anything a library prints) goes to stderr instead, so stdout parses as JSON.
    with contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext():
        try:
            with progress_line(cfg.sim.tokens, f"{cfg.sim.algo} x{cfg.sim.workers}", disable=quiet) as update:
                result = run(cfg, on_progress=update)
        except CorpusError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(summary_line(result))
        if "honest_banned" in result:
            click.echo(security_line(result))
    if to_stdout:
        out.write(json.dumps(result, indent=1) + "\n")
        out.flush()
    elif json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=1))
        click.echo(f"wrote {json_path}", err=True)


def summary_line(r: dict) -> str:
    return (
        f"{r['algo']}: val_loss {r['final_val_loss']:.4f} | tokens {r['tokens']:,} | outer steps {r['outer_steps']} | "
        f"accepted {r['updates_accepted']} rejected {r['updates_rejected']} dropped {r['updates_dropped']} | "
        f"up/worker {r['bytes_up_per_worker'] / 1e6:.2f} MB (DDP {r['ddp_bytes_up_per_worker'] / 1e6:.1f} MB, "
        f"{r['bytes_reduction_vs_ddp']:.0f}x less) | wall {r['wall_s']:.1f}s"
    )


def security_line(r: dict) -> str:
    mal = len(r["malicious_nodes"])
    line = (f"security: attack {r['attack'] or '-'} | malicious {mal} | banned {r['cheaters_banned']}/{mal} "
            f"cheaters, {r['honest_banned']} honest | audits {r['audits_passed']} passed {r['audits_failed']} "
            f"failed | verify cost {100 * r['verify_cost']:.1f}% of compute")
    if "backdoor_asr" in r:
        line += f" | backdoor ASR {100 * r['backdoor_asr']:.1f}% (base {100 * r['backdoor_base_rate']:.1f}%)"
    return line


if __name__ == "__main__":
    simulate_cmd(sys.argv[1:])
