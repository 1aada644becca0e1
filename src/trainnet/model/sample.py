"""`trainnet sample`: print text sampled from a checkpoint.

    trainnet sample --checkpoint out/coordinator/checkpoint.safetensors --prompt "def " --tokens 200
    model, cfg = load_checkpoint(path); text = sample_text(model, "import ", tokens=120, seed=0)

Checkpoints are safetensors only (never torch.load / pickle). The model's GPTConfig comes from the
safetensors metadata key "trainnet_model_config" (a JSON object of GPTConfig fields); if that key
is absent, from a sidecar JSON file next to the checkpoint: PATH with suffix ".json"
(e.g. model.safetensors -> model.json), holding either the GPTConfig fields or {"model": {...}}.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from trainnet.model.gpt import GPT, GPTConfig

CONFIG_KEY = "trainnet_model_config"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why."""


def _config_from(data: object, where: str) -> GPTConfig:
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: model config must be a JSON object")
    names = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = set(data) - names
    if unknown:
        raise CheckpointError(f"{where}: unknown model config fields {sorted(unknown)}")
    try:
        return GPTConfig(**data)
    except TypeError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def read_config(path: str | Path) -> GPTConfig:
    """The GPTConfig stored with a checkpoint (metadata first, then the sidecar JSON)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own types for malformed files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if CONFIG_KEY in meta:
        try:
            return _config_from(json.loads(meta[CONFIG_KEY]), f"{path} metadata")
        except ValueError as exc:
            raise CheckpointError(f"{path}: metadata {CONFIG_KEY} is not valid JSON ({exc})") from None
    side = path.with_suffix(".json")
    if side.exists():
        try:
            return _config_from(json.loads(side.read_text()), str(side))
        except ValueError as exc:
            raise CheckpointError(f"{side}: not valid JSON ({exc})") from None
    raise CheckpointError(f"{path}: no model config (metadata key {CONFIG_KEY!r} or sidecar {side.name})")


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[GPT, GPTConfig]:
    """Build the GPT described by the checkpoint and load its weights (strict names and shapes)."""
    cfg = read_config(path)
    model = GPT(cfg)
    tensors = load_file(str(path))
    own = dict(model.named_parameters())
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise CheckpointError(f"{path}: missing tensors {missing[:5]}")
    with torch.no_grad():
        for name, p in own.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(p.shape):
                raise CheckpointError(f"{path}: {name} has shape {tuple(t.shape)}, model needs {tuple(p.shape)}")
            p.copy_(t.to(p.dtype))
    return model.to(device).eval(), cfg


def _printable(text: str) -> str:
    # Sampled bytes can be anything, including terminal escape sequences: show only safe characters.
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text)


def sample_text(model: GPT, prompt: str = "", tokens: int = 200, temperature: float = 0.8, seed: int = 0,
                top_k: int | None = None) -> str:
    """Continue `prompt` by `tokens` bytes; deterministic for a seed. Returns prompt + continuation."""
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
