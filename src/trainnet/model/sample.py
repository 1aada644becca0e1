"""`trainnet sample`: print text sampled from a checkpoint.

    trainnet sample --checkpoint out/coordinator/checkpoint.safetensors --prompt "def " --tokens 200
    model, cfg = load_checkpoint(path); text = sample_text(model, "import ", tokens=120, seed=0)

Checkpoints are safetensors only (never torch.load / pickle); how their model config is stored:
trainnet.models.checkpoint. Sampling here is byte-level: it needs a gpt-bytes checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import click
import torch
import torch.nn as nn

from trainnet.models.checkpoint import CONFIG_KEY, CheckpointError, load_checkpoint, read_config

__all__ = ["CONFIG_KEY", "CheckpointError", "load_checkpoint", "read_config", "sample_lines", "sample_text"]


def _printable(text: str) -> str:
    # Sampled bytes can be anything, including terminal escape sequences: show only safe characters.
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text)


def sample_text(model: nn.Module, prompt: str = "", tokens: int = 200, temperature: float = 0.8, seed: int = 0,
                top_k: int | None = None) -> str:
    """Continue `prompt` by `tokens` bytes; deterministic for a seed. Returns prompt + continuation."""
    if not hasattr(model, "generate") or getattr(getattr(model, "cfg", None), "vocab_size", 0) != 256:
        raise CheckpointError("byte-level sampling needs a gpt-bytes model with vocab_size 256")
    data = prompt.encode("utf-8") or b"\n"
    idx = torch.tensor([list(data)], dtype=torch.long, device=next(model.parameters()).device)
    gen = torch.Generator(device=idx.device).manual_seed(seed)
    out = model.generate(idx, tokens, temperature=temperature, top_k=top_k, generator=gen)
    text = bytes(int(v) & 0xFF for v in out[0].tolist()).decode("utf-8", errors="replace")
    return _printable(text if prompt else text[1:])


def sample_lines(path: str | Path, prompt: str = "", tokens: int = 200, temperature: float = 0.8,
                 seed: int = 0, max_lines: int | None = None) -> list[str]:
    """Load a checkpoint and return its sample split into lines (at most max_lines)."""
    model, _ = load_checkpoint(path)
    lines = sample_text(model, prompt, tokens, temperature, seed).splitlines()
    return lines[:max_lines] if max_lines else lines


@click.command("sample")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="safetensors checkpoint with its GPTConfig (metadata or sidecar .json).")
@click.option("--prompt", default="", help="Text to continue (default: start of a line).")
@click.option("--tokens", type=click.IntRange(1, 100_000), default=200, show_default=True, help="Bytes to sample.")
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.8, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), help="Sample only among the k likeliest bytes.")
@click.option("--seed", type=int, default=0, show_default=True)
def sample_cmd(checkpoint, prompt, tokens, temperature, top_k, seed):
    """Print text sampled from a trained checkpoint (byte-level GPT)."""
    torch.manual_seed(seed)
    try:
        model, _ = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(sample_text(model, prompt, tokens, temperature, seed, top_k))
