"""Model checkpoints: safetensors of our parameter names, with the model config in the metadata.

    data = safetensors.torch.save(params, metadata=checkpoint_metadata(cfg.model, version="12"))
    mcfg = read_config("checkpoint.safetensors")          # ModelConfig (metadata first, then a sidecar JSON)
    model, mcfg = load_checkpoint("checkpoint.safetensors")

Metadata keys: "trainnet_model_config" (ModelConfig.to_dict() as JSON; older checkpoints hold only the GPT
fields, read as spec "gpt-bytes"), "trainnet_model_spec" and "trainnet_tokenizer" (the tokenizer's info). Without that key, a sidecar JSON next to the
checkpoint (model.safetensors -> model.json) holding the fields or {"model": {...}}. Never torch.load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from trainnet.models.config import ModelConfig, ModelConfigError

CONFIG_KEY = "trainnet_model_config"
SPEC_KEY = "trainnet_model_spec"
TOKENIZER_KEY = "trainnet_tokenizer"  # JSON of the model's tokenizer info (kind, sha256, vocab_size) or null


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why."""


def checkpoint_metadata(mcfg: ModelConfig, tokenizer: dict | None = None, **extra: str) -> dict[str, str]:
    """safetensors metadata that lets read_config rebuild the model anywhere, and export check the tokenizer
    (string values only). Call it where mcfg's files are (the coordinator): it resolves the config.
    `tokenizer`: the tokenizer info to record (e.g. /v1/info's data.tokenizer, where mcfg is the wire form,
    which names no tokenizer file); default: the one mcfg declares."""
    from trainnet.models.registry import model_tokenizer_info

    tok = tokenizer if tokenizer is not None else model_tokenizer_info(mcfg)
    return {CONFIG_KEY: json.dumps(mcfg.to_dict()), SPEC_KEY: mcfg.spec,
            TOKENIZER_KEY: json.dumps(tok), **{k: str(v) for k, v in extra.items()}}


def _config_from(data: object, where: str) -> ModelConfig:
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: model config must be a JSON object")
    try:
        return ModelConfig.from_dict(data, where)
    except (ModelConfigError, TypeError) as exc:
        raise CheckpointError(str(exc)) from None


def read_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored with a checkpoint (metadata first, then the sidecar JSON)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own types for malformed files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if CONFIG_KEY in meta:
        try:
            data = json.loads(meta[CONFIG_KEY])
        except ValueError as exc:
            raise CheckpointError(f"{path}: metadata {CONFIG_KEY} is not valid JSON ({exc})") from None
        return _config_from(data, f"{path} metadata")
    side = path.with_suffix(".json")
    if side.exists():
        try:
            data = json.loads(side.read_text())
        except ValueError as exc:
            raise CheckpointError(f"{side}: not valid JSON ({exc})") from None
        return _config_from(data, str(side))
    raise CheckpointError(f"{path}: no model config (metadata key {CONFIG_KEY!r} or sidecar {side.name})")


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Build the model described by the checkpoint and load its weights (strict names and shapes)."""
    from trainnet.models.registry import build_model
    from trainnet.models.weights import copy_into, read_safetensors

    cfg = read_config(path)
    try:
        model = build_model(cfg, seed=0)
        copy_into(model, read_safetensors(Path(path), str(path)), str(path))
    except ModelConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return model.to(device).eval(), cfg


def checked_tokenizer(checkpoint: str | Path, path: str | Path) -> object:
    """The tokenizer at `path` (a tokenizer.json or a prepared data folder), refused with a CheckpointError when
    the checkpoint records another tokenizer's sha256 (export and sample share this check)."""
    from safetensors import safe_open

    from trainnet.data.tokenizing import TokenizerError, load_tokenizer

    try:
        tok = load_tokenizer(path)
    except TokenizerError as exc:
        raise CheckpointError(str(exc)) from None
    with safe_open(str(checkpoint), framework="pt") as f:
        expected = json.loads((f.metadata() or {}).get(TOKENIZER_KEY, "null"))
    if isinstance(expected, dict) and expected.get("sha256") and expected["sha256"] != tok.sha256:
        raise CheckpointError(f"--tokenizer {path}: sha256 {tok.sha256[:12]} differs from the one the model was "
                              f"trained with ({expected['sha256'][:12]})")
    return tok
