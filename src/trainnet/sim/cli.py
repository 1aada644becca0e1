"""`trainnet simulate`: run the protocol with N virtual workers, or the synchronous baseline.

    trainnet simulate --config bench/standard.toml --dropout 0.3 --json out.json
    trainnet simulate --config bench/standard.toml --algo sync --set sim.seed=2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trainnet.config import ConfigError, load_config


@click.command("simulate")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML run config.")
@click.option("--workers", type=click.IntRange(min=1), help="Number of virtual workers (sim.workers).")
@click.option("--tokens", type=click.IntRange(min=1), help="Accepted-token budget (sim.tokens).")
@click.option("--dropout", type=click.FloatRange(0.0, 0.95), help="Probability a task is lost (sim.dropout).")
@click.option("--seed", type=int, help="Run seed (sim.seed).")
@click.option("--algo", type=click.Choice(["async", "sync"]), help="async protocol or synchronous baseline.")
@click.option("--codec", help="Update codec spec, e.g. fp32 (sim.codec).")
@click.option("--data", "data_path", type=click.Path(), help="Text file or folder (default: Python stdlib).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the result as JSON here.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any config field.")
@click.option("--quiet", is_flag=True, help="No progress line.")
def simulate_cmd(config_path, workers, tokens, dropout, seed, algo, codec, data_path, json_path, overrides, quiet):
    """Simulate a TrainNet run in one process and report measured loss, tokens and bytes."""
    flags = {"sim.workers": workers, "sim.tokens": tokens, "sim.dropout": dropout, "sim.seed": seed,
             "sim.algo": algo, "sim.codec": codec, "data.path": data_path}
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
    try:
        with progress_line(cfg.sim.tokens, f"{cfg.sim.algo} x{cfg.sim.workers}", disable=quiet) as update:
            result = run(cfg, on_progress=update)
    except CorpusError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary_line(result))
    if json_path:
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


if __name__ == "__main__":
    simulate_cmd(sys.argv[1:])
