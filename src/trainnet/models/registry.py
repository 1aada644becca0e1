"""Model spec registry: one place that knows how to build each kind of model and convert its weights.

    model = build_model(cfg.model, seed=0)          # nn.Module; model(x, y) -> (logits, loss)
    ident = model_identity(cfg.model)               # JSON-able: spec, resolved config, tokenizer sha256, ...
    hf_sd = to_hf(cfg.model, params); ours = from_hf(cfg.model, hf_sd)   # Hugging Face names and back
    register_spec(ModelSpec(name="my-model", ...))  # bring your own kind

Pattern: torchtitan's TrainSpec + state_dict_adapter. Built in: "gpt-bytes" (models/gpt_bytes.py) and
"hf", any transformers causal LM built from a config (models/hf.py). Parameter names come from
`named_parameters()` and are identical for every build of the same config: the coordinator and the
workers exchange tensors by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from trainnet.models.config import ModelConfig, ModelConfigError

ParamDict = dict[str, torch.Tensor]
SPEC_ATTR = "trainnet_spec"  # set on every module build_model returns: the spec's name


def decay_matrices(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as nanoGPT: weight decay on matrices (dim >= 2, embeddings included), none on norms
    and biases; parameters in `parameters()` order (the order is part of a task's numerics)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one kind of model. `build` gets a resolved config and uses the global
    torch RNG; everything else is a pure function of the config and tensors."""

    name: str
    resolve: Callable[[ModelConfig], ModelConfig]  # self-contained config (no paths; see ModelConfig.to_dict)
    build: Callable[[ModelConfig], nn.Module]
    load_init: Callable[[nn.Module, ModelConfig], None]  # weights from cfg.init (a local checkpoint)
    hf_config: Callable[[ModelConfig], dict[str, Any]]  # Hugging Face config.json of the same model
    to_hf: Callable[[ModelConfig, ParamDict], ParamDict]
    from_hf: Callable[[ModelConfig, ParamDict], ParamDict]
    set_checkpointing: Callable[[nn.Module, bool], None]  # activation checkpointing per transformer block
    default_tokenizer: str | None = None  # "bytes" for byte-level models
    param_groups: Callable[[nn.Module, float], list[dict[str, Any]]] = decay_matrices
    # The parameter count from the config alone, when the spec knows it (else it is counted on the meta device,
    # whose first use imports torch._dynamo: seconds of start-up for every process of a small run).
    num_params: Callable[[ModelConfig], int] | None = None

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = model(x, y)
        return out[-1] if isinstance(out, tuple) else out


_SPECS: dict[str, ModelSpec] = {}


def register_spec(spec: ModelSpec) -> None:
    """Add a kind of model (a name already taken raises ValueError)."""
    if spec.name in _SPECS and _SPECS[spec.name] is not spec:
        raise ValueError(f"model spec {spec.name!r} is already registered")
    _SPECS[spec.name] = spec


def _builtins() -> None:
    # Imported on first use so that `import trainnet.config` does not import transformers.
    if "gpt-bytes" not in _SPECS:
        from trainnet.models import gpt_bytes, hf

        register_spec(gpt_bytes.SPEC)
        register_spec(hf.SPEC)


def get_spec(name: str) -> ModelSpec:
    _builtins()
    if name not in _SPECS:
        raise KeyError(f"unknown model spec {name!r}; known: {', '.join(sorted(_SPECS))}")
    return _SPECS[name]


def spec_names() -> list[str]:
    _builtins()
    return sorted(_SPECS)


def build_model(mcfg: ModelConfig, seed: int | None = None, device: str | torch.device | None = None) -> nn.Module:
    """A fresh model for the config: random init from `seed` (None: the global torch RNG, as GPT(cfg) did),
    then the weights of `mcfg.init` if set. Same config and seed -> same parameter names and values."""
    mcfg.check()
    spec = get_spec(mcfg.spec)
    resolved = spec.resolve(mcfg)
    if seed is None:
        model = spec.build(resolved)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = spec.build(resolved)
    if mcfg.init:
        spec.load_init(model, mcfg)
    setattr(model, SPEC_ATTR, spec.name)
    return model.to(device) if device is not None else model


def count_params(mcfg: ModelConfig) -> int:
    """Number of parameters (tied weights once), counted on the meta device: nothing is allocated."""
    spec = get_spec(mcfg.spec)
    if spec.num_params is not None:
        return spec.num_params(spec.resolve(mcfg))
    with torch.device("meta"):
        model = spec.build(spec.resolve(mcfg))
    return sum(p.numel() for p in model.parameters())


def model_tokenizer_info(mcfg: ModelConfig) -> dict[str, Any] | None:
    """The tokenizer the model declares (`tokenizer`, else its spec's default) as tokenizer.info(), or None."""
    from trainnet.data.tokenizing import load_tokenizer

    name = mcfg.tokenizer or get_spec(mcfg.spec).default_tokenizer
    return None if name is None else load_tokenizer(name).info()


def _init_sha256(path: str | None) -> str | None:
    """sha256 over the (name, sha256) of the init checkpoint's safetensors files."""
    if not path:
        return None
    p = Path(path).expanduser()
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        fh = hashlib.sha256()
        with open(f, "rb") as fp:
            for block in iter(lambda fp=fp: fp.read(1 << 22), b""):
                fh.update(block)
        h.update(f"{f.name}:{fh.hexdigest()}\n".encode())
    return h.hexdigest()


def model_identity(mcfg: ModelConfig) -> dict[str, Any]:
    """What names the model of a run (JSON-able; part of the run identity): spec, the resolved wire config,
    the tokenizer's info (sha256, vocab_size) or None, the init checkpoint's hash or None, and n_params."""
    mcfg.check()
    wire = mcfg.to_dict()
    return {"spec": mcfg.spec, "config": wire, "tokenizer": model_tokenizer_info(mcfg),
            "init_sha256": _init_sha256(mcfg.init), "n_params": count_params(mcfg)}


def check_corpus(mcfg: ModelConfig, info: dict[str, Any]) -> None:
    """Raise ModelConfigError if the model cannot train on a corpus with this `corpus.info()`: a vocabulary
    smaller than the corpus's, or a declared tokenizer whose sha256 differs from the corpus's."""
    resolved = get_spec(mcfg.spec).resolve(mcfg)
    vocab = int(info.get("vocab_size", 0))
    if resolved.vocab_size < vocab:
        raise ModelConfigError(f"model vocab_size {resolved.vocab_size} is smaller than the data's vocabulary "
                               f"({vocab}, tokenizer {info.get('tokenizer', {}).get('kind')}): raise model.vocab_size "
                               "(gpt-bytes) or the hf config's vocab_size")
    declared = model_tokenizer_info(mcfg)
    data_tok = info.get("tokenizer") or {}
    if declared is not None and data_tok.get("sha256") and declared["sha256"] != data_tok["sha256"]:
        raise ModelConfigError(f"model tokenizer ({declared['kind']}, sha256 {declared['sha256'][:12]}) differs from "
                               f"the data's ({data_tok.get('kind')}, sha256 {data_tok['sha256'][:12]}): set "
                               "model.tokenizer to the prepared data folder")


def to_hf(mcfg: ModelConfig, params: ParamDict) -> ParamDict:
    """Our parameter dict -> Hugging Face state dict names and layouts (tied weights under both names)."""
    spec = get_spec(mcfg.spec)
    return spec.to_hf(spec.resolve(mcfg), params)


def from_hf(mcfg: ModelConfig, hf_state: ParamDict) -> ParamDict:
    """A Hugging Face state dict -> our parameter dict (every parameter present; unknown names raise)."""
    spec = get_spec(mcfg.spec)
    return spec.from_hf(spec.resolve(mcfg), hf_state)


def hf_config(mcfg: ModelConfig) -> dict[str, Any]:
    """The Hugging Face config.json (a dict) of the same model."""
    spec = get_spec(mcfg.spec)
    return spec.hf_config(spec.resolve(mcfg))


def spec_of(model: nn.Module) -> ModelSpec | None:
    """The spec that built `model` (build_model marks it; a bare GPT or HFCausalLM is recognised too)."""
    name = getattr(model, SPEC_ATTR, None)
    if name:
        return get_spec(name)
    _builtins()
    from trainnet.models.gpt import GPT

    if isinstance(model, GPT):
        return get_spec("gpt-bytes")
    if type(model).__name__ == "HFCausalLM" and type(model).__module__ == "trainnet.models.hf":
        return get_spec("hf")
    return None


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups for a model (its spec's rule; any other module: decay on matrices only)."""
    spec = spec_of(model)
    return (spec.param_groups if spec else decay_matrices)(model, weight_decay)


def set_checkpointing(model: nn.Module, on: bool = True) -> None:
    """Turn activation checkpointing on or off (recompute each block in backward: same results, less memory).
    Turning it on for a module no spec knows raises ValueError; turning it off there does nothing."""
    spec = spec_of(model)
    if spec is None:
        if on:
            raise ValueError(f"activation checkpointing needs a model from build_model(); got {type(model).__name__}")
        return
    spec.set_checkpointing(model, on)


def replace(mcfg: ModelConfig, **changes: Any) -> ModelConfig:
    """dataclasses.replace with a deep copy of `hf` (configs are mutable dataclasses)."""
    return dataclasses.replace(mcfg, **({"hf": dict(mcfg.hf)} | changes))
