"""Model spec "hf": any `transformers` causal LM, built from a config (never downloaded).

    mcfg = ModelConfig(spec="hf", block_size=128, hf={"model_type": "llama", "hidden_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                       "intermediate_size": 128, "vocab_size": 512})
    model = build_model(mcfg, seed=0)      # HFCausalLM: model(x, y) -> (logits, loss); model.hf is the HF model

The config is `config` (a config.json path; with only `init` set, init/config.json), then the inline
`[model.hf]` fields over it. vocab_size, if neither gives it, comes from the tokenizer, then from
`model.vocab_size`. Weights come from random init (transformers' own `_init_weights`, global torch RNG),
then from `init` (a local folder or file of safetensors, Hugging Face names). Parameters are named
"hf." + the Hugging Face name; to_hf / from_hf strip and add that prefix, and handle tied weights.
The loss is ours (cross-entropy of x's logits against y = x shifted by one, fp32), not the HF model's
`labels` path, which shifts labels itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainnet.models.config import ModelConfig, ModelConfigError
from trainnet.models.registry import ModelSpec, ParamDict, replace

PREFIX = "hf."
# Keys of a saved config.json that describe a file or a runtime choice, not the model.
_VOLATILE = ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype", "use_cache",
             "_attn_implementation", "_attn_implementation_autoset", "auto_map")


class HFCausalLM(nn.Module):
    """A transformers causal LM with TrainNet's forward contract: forward(x, y) -> (logits, loss)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.hf(input_ids=x, use_cache=False).logits
        loss = None
        if y is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
        return logits, loss


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.expanduser().read_text())
    except OSError as exc:
        raise ModelConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ModelConfigError(f"{where}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{where}: {path} must hold a JSON object")
    return data


def _auto_config(fields: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    fields = dict(fields)
    model_type = fields.pop("model_type", None)
    if not isinstance(model_type, str):
        raise ModelConfigError("model.hf.model_type is required for spec \"hf\" (e.g. \"llama\", \"qwen2\", \"gpt2\"), "
                               "inline or in the config file")
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelConfigError(f"model.hf: transformers cannot build a {model_type!r} config from these fields ({exc})"
                               ) from None


def resolve(mcfg: ModelConfig) -> ModelConfig:
    merged: dict[str, Any] = {}
    if mcfg.config:
        merged = _read_json(Path(mcfg.config), "model.config")
    elif mcfg.init and Path(mcfg.init).expanduser().is_dir() and (Path(mcfg.init).expanduser() / "config.json").is_file():
        merged = _read_json(Path(mcfg.init).expanduser() / "config.json", "model.init")
    merged.update(mcfg.hf)
    merged = {k: v for k, v in merged.items() if k not in _VOLATILE}
    tok_vocab = None
    if mcfg.tokenizer:
        from trainnet.data.tokenizing import load_tokenizer

        tok_vocab = load_tokenizer(mcfg.tokenizer).vocab_size
    if "vocab_size" not in merged:
        merged["vocab_size"] = tok_vocab if tok_vocab is not None else mcfg.vocab_size
    config = _auto_config(merged)
    vocab = int(config.vocab_size)
    if tok_vocab is not None and tok_vocab > vocab:
        raise ModelConfigError(f"model vocab_size {vocab} is smaller than tokenizer {mcfg.tokenizer}'s vocabulary "
                               f"({tok_vocab})")
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions < mcfg.block_size:
        raise ModelConfigError(f"model.block_size {mcfg.block_size} exceeds the hf config's max_position_embeddings "
                               f"({positions})")
    # The GPT shape fields are unused here: reset them so they cannot make two equal models look different.
    unused = {f: getattr(ModelConfig(), f) for f in ("n_layer", "n_head", "n_embd", "dropout", "bias")}
    return replace(mcfg, config=None, hf=merged, init=None, tokenizer=None, vocab_size=vocab, **unused)


def build(mcfg: ModelConfig) -> nn.Module:
    from transformers import AutoModelForCausalLM

    config = _auto_config(mcfg.hf)
    config.use_cache = False
    # fp32 master weights (autocast makes bf16 copies); sdpa attention, the fast path on CPU and CUDA.
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return HFCausalLM(model)


def _aliases(hf_model: nn.Module) -> dict[str, str]:
    """Tied weights: {duplicate name: the name named_parameters() keeps}."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in hf_model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def _meta_model(mcfg: ModelConfig) -> nn.Module:
    with torch.device("meta"):
        return build(mcfg).hf


def to_hf(mcfg: ModelConfig, params: ParamDict) -> ParamDict:
    bad = sorted(k for k in params if not k.startswith(PREFIX))
    if bad:
        raise ModelConfigError(f"hf to_hf: parameter names without the {PREFIX!r} prefix: {bad[:5]}")
    out = {k[len(PREFIX):]: v for k, v in params.items()}
    for dup, name in _aliases(_meta_model(mcfg)).items():
        if name in out:
            out.setdefault(dup, out[name])
    return out


def from_hf(mcfg: ModelConfig, hf_state: ParamDict) -> ParamDict:
    meta = _meta_model(mcfg)
    names = [n for n, _ in meta.named_parameters()]
    aliases = _aliases(meta)
    missing = [n for n in names if n not in hf_state]
    if missing:
        raise ModelConfigError(f"hf from_hf: missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    # Buffers such as rotary inv_freq are recomputed from the config; tied duplicates are the same tensor.
    extra = sorted(k for k in hf_state if k not in names and k not in aliases and not k.endswith("inv_freq"))
    if extra:
        raise ModelConfigError(f"hf from_hf: names this config's model does not have: {extra[:5]}")
    return {PREFIX + n: hf_state[n] for n in names}


def hf_config(mcfg: ModelConfig) -> dict[str, Any]:
    config = _auto_config(mcfg.hf)
    out = config.to_dict()
    for k in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        out.pop(k, None)
    out["use_cache"] = True
    return out


def load_init(model: nn.Module, mcfg: ModelConfig) -> None:
    from trainnet.models.weights import copy_into, read_safetensors

    tensors = read_safetensors(Path(mcfg.init or ""), "model.init")
    copy_into(model, from_hf(resolve(mcfg), tensors), f"model.init {mcfg.init}")


def set_checkpointing(model: nn.Module, on: bool) -> None:
    hf = model.hf
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5 (the gradient_* names are deprecated)
        active = hf.is_activation_checkpointing
        if on and not active:
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif active and not on:
            hf.activation_checkpointing_disable()
    elif on:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hf.is_gradient_checkpointing:
        hf.gradient_checkpointing_disable()


SPEC = ModelSpec(name="hf", resolve=resolve, build=build, load_init=load_init, hf_config=hf_config,
                 to_hf=to_hf, from_hf=from_hf, set_checkpointing=set_checkpointing)
