"""Model spec "gpt-bytes": TrainNet's own GPT (models/gpt.py), and its Hugging Face GPT-2 twin.

    model = build_model(ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64))
    hf_sd = to_hf(mcfg, params)     # GPT2LMHeadModel names; transformers.GPT2LMHeadModel loads them

The mapping to GPT-2 (`hf_config`): our nn.Linear weights [out, in] are GPT-2's Conv1D weights [in, out]
(transposed); layers without bias (bias = false) become zero biases; our MLP uses exact GELU, GPT-2's
"gelu" (not its default "gelu_new", the tanh approximation); LayerNorm eps 1e-5 on both; lm_head is tied
to the token embedding on both. Numerics of build_model for this spec are exactly GPT(GPTConfig(...)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from trainnet.models.config import ModelConfig, ModelConfigError
from trainnet.models.gpt import GPT, GPTConfig
from trainnet.models.registry import ModelSpec, ParamDict, replace

_GPT_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias")


def gpt_config(mcfg: ModelConfig) -> GPTConfig:
    return GPTConfig(**{k: getattr(mcfg, k) for k in _GPT_FIELDS})


def resolve(mcfg: ModelConfig) -> ModelConfig:
    if mcfg.hf or mcfg.config:
        raise ModelConfigError("model.hf / model.config are for spec = \"hf\"; gpt-bytes takes n_layer, n_head, "
                               "n_embd, block_size, vocab_size, dropout, bias")
    if mcfg.n_embd % mcfg.n_head:
        raise ModelConfigError(f"model.n_embd ({mcfg.n_embd}) must be divisible by model.n_head ({mcfg.n_head})")
    if mcfg.tokenizer:
        from trainnet.data.tokenizing import load_tokenizer

        vocab = load_tokenizer(mcfg.tokenizer).vocab_size
        if vocab > mcfg.vocab_size:
            raise ModelConfigError(f"model.vocab_size {mcfg.vocab_size} is smaller than tokenizer {mcfg.tokenizer}'s "
                                   f"vocabulary ({vocab}): set model.vocab_size = {vocab} (or more)")
    return replace(mcfg, config=None, hf={}, init=None, tokenizer=None)


def build(mcfg: ModelConfig) -> nn.Module:
    return GPT(gpt_config(mcfg))


def num_params(mcfg: ModelConfig) -> int:
    """GPT's parameter count (lm_head tied to wte, counted once), without building it."""
    d, b = mcfg.n_embd, int(mcfg.bias)
    per_layer = 2 * d * (1 + b) + (3 * d * d + 3 * d * b) + (d * d + d * b) + (4 * d * d + 4 * d * b) + (4 * d * d + d * b)
    return mcfg.vocab_size * d + mcfg.block_size * d + mcfg.n_layer * per_layer + d * (1 + b)


def _names(n_layer: int, bias: bool) -> list[tuple[str, str, bool]]:
    """(our name, GPT-2 name, transposed) for every weight; biases follow the same pattern."""
    rows = [("wte.weight", "transformer.wte.weight", False), ("wpe.weight", "transformer.wpe.weight", False)]
    for i in range(n_layer):
        o, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs, t in (("ln1", "ln_1", False), ("attn.qkv", "attn.c_attn", True),
                                ("attn.proj", "attn.c_proj", True), ("ln2", "ln_2", False),
                                ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True)):
            rows.append((f"{o}{ours}.weight", f"{h}{theirs}.weight", t))
            rows.append((f"{o}{ours}.bias" if bias else "", f"{h}{theirs}.bias", False))
    rows += [("ln_f.weight", "transformer.ln_f.weight", False), ("ln_f.bias" if bias else "", "transformer.ln_f.bias", False)]
    return rows


def _bias_width(mcfg: ModelConfig, hf_name: str) -> int:
    d = mcfg.n_embd
    if "c_attn" in hf_name:
        return 3 * d
    if "c_fc" in hf_name:
        return 4 * d
    return d


def to_hf(mcfg: ModelConfig, params: ParamDict) -> ParamDict:
    # lm_head.weight appears in state_dict() (tied to wte), not in named_parameters(): accept both
    unknown = set(params) - {o for o, _, _ in _names(mcfg.n_layer, mcfg.bias) if o} - {"lm_head.weight"}
    if unknown:
        raise ModelConfigError(f"gpt-bytes to_hf: unexpected parameter names {sorted(unknown)[:5]}")
    out: ParamDict = {}
    ref = params["wte.weight"]
    for ours, theirs, transposed in _names(mcfg.n_layer, mcfg.bias):
        if not ours:  # no-bias layer: GPT-2 always has one, zero is the same function
            out[theirs] = torch.zeros(_bias_width(mcfg, theirs), dtype=ref.dtype)
            continue
        t = params[ours]
        out[theirs] = t.t().contiguous() if transposed else t
    out["lm_head.weight"] = out["transformer.wte.weight"]  # tied, as in GPT2LMHeadModel.state_dict()
    return out


def from_hf(mcfg: ModelConfig, hf_state: ParamDict) -> ParamDict:
    rows = _names(mcfg.n_layer, mcfg.bias)
    known = {t for _, t, _ in rows} | {"lm_head.weight"}
    unknown = sorted(k for k in hf_state if k not in known and not k.endswith((".attn.bias", ".attn.masked_bias")))
    if unknown:
        raise ModelConfigError(f"gpt-bytes from_hf: names GPT-2 with this shape does not have: {unknown[:5]}")
    out: ParamDict = {}
    for ours, theirs, transposed in rows:
        if theirs not in hf_state:
            if not ours:
                continue  # an absent bias is a zero bias
            raise ModelConfigError(f"gpt-bytes from_hf: missing {theirs}")
        t = hf_state[theirs]
        if not ours:
            if bool(t.detach().ne(0).any()):
                raise ModelConfigError(f"gpt-bytes from_hf: {theirs} is not zero, but model.bias = false cannot "
                                       "hold it (set model.bias = true)")
            continue
        out[ours] = t.t().contiguous() if transposed else t
    head = hf_state.get("lm_head.weight")
    if head is not None and not torch.equal(head, hf_state["transformer.wte.weight"]):
        raise ModelConfigError("gpt-bytes from_hf: lm_head.weight differs from transformer.wte.weight, but gpt-bytes "
                               "ties them")
    return out


def hf_config(mcfg: ModelConfig) -> dict[str, Any]:
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": mcfg.vocab_size,
        "n_positions": mcfg.block_size, "n_embd": mcfg.n_embd, "n_layer": mcfg.n_layer, "n_head": mcfg.n_head,
        "n_inner": 4 * mcfg.n_embd, "activation_function": "gelu", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": mcfg.dropout, "embd_pdrop": mcfg.dropout, "attn_pdrop": mcfg.dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "initializer_range": 0.02, "tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": None,
    }


def load_init(model: nn.Module, mcfg: ModelConfig) -> None:
    """Weights from a safetensors file (or a folder of them) in our names or GPT-2's (never a pickle)."""
    from trainnet.models.weights import copy_into, read_safetensors

    tensors = read_safetensors(Path(mcfg.init or ""), "model.init")
    if "transformer.wte.weight" in tensors:
        tensors = from_hf(mcfg, tensors)
    copy_into(model, tensors, f"model.init {mcfg.init}")


def set_checkpointing(model: nn.Module, on: bool) -> None:
    model.checkpointing = on


SPEC = ModelSpec(name="gpt-bytes", resolve=resolve, build=build, load_init=load_init, hf_config=hf_config,
                 to_hf=to_hf, from_hf=from_hf, set_checkpointing=set_checkpointing, default_tokenizer="bytes",
                 num_params=num_params)
