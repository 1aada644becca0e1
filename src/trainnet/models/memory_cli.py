"""`trainnet plan-memory`: does one worker task of a run's model fit a GPU? (estimates from formulas)

    trainnet plan-memory --model bench/standard.toml --gpu rtx4090
    trainnet plan-memory --model run.toml --gpu rtx3060 --batch-size 16 --seq-len 1024 --precision bf16
    trainnet plan-memory --model run.toml --set model.n_layer=24 --checkpointing --json

The model comes from the run TOML's [model] section; batch size from [inner] batch_size, the sequence
length from model.block_size and the precision from inner.precision unless given. See models/memory.py
for the formulas.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from trainnet.planner.gpus import GPU_KINDS


@click.command("plan-memory")
@click.option("--model", "model_toml", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Run TOML whose [model] (and [inner]) to plan for (default: the built-in defaults).")
@click.option("--gpu", type=click.Choice(sorted(GPU_KINDS)), default="rtx4090", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: inner.batch_size.")
@click.option("--seq-len", type=click.IntRange(min=1), default=None, help="Default: model.block_size.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default=None,
              help="Default: inner.precision (auto = bf16 on a GPU).")
@click.option("--checkpointing", is_flag=True, help="Plan with activation checkpointing.")
@click.option("--fused-adamw/--no-fused-adamw", default=True, show_default=True,
              help="The fused CUDA AdamW (run_task's default on CUDA) or foreach AdamW (its scratch copy).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE", help="Override a config field.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_memory_cmd(model_toml: Path | None, gpu: str, batch_size: int | None, seq_len: int | None,
                    precision: str | None, checkpointing: bool, fused_adamw: bool, overrides: tuple[str, ...],
                    as_json: bool) -> None:
    """Estimate the GPU memory of one task of the model, with a breakdown, and the options that make it fit."""
    from trainnet.config import ConfigError, load_config
    from trainnet.models.config import ModelConfigError
    from trainnet.models.memory import MemoryOptions, plan_memory

    try:
        cfg = load_config(model_toml, list(overrides))
        plan = plan_memory(cfg.model, gpu=gpu, batch_size=batch_size or cfg.inner.batch_size,
                           seq_len=seq_len or cfg.model.block_size, precision=precision or cfg.inner.precision,
                           options=MemoryOptions(checkpointing=checkpointing, fused_adamw=fused_adamw))
    except (ConfigError, ModelConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(plan.to_dict() | {"estimate": True}, indent=1))
    else:
        click.echo(plan.table())
