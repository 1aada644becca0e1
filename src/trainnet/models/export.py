"""`trainnet export`: a checkpoint as a Hugging Face folder that transformers loads offline.

    trainnet export trainnet-demo/final_model.safetensors --hf out/hf-model
    trainnet export llm-demo/final_model.safetensors --hf out/llama --tokenizer data/prepared
    model = transformers.AutoModelForCausalLM.from_pretrained("out/hf-model")   # same logits as ours

Writes config.json, model.safetensors (save_pretrained; safetensors only) and the tokenizer files. gpt-bytes
becomes GPT2LMHeadModel (see models/gpt_bytes.py for the mapping) with a 256-token byte tokenizer (id = byte
value); an "hf" model keeps its own architecture and needs the tokenizer it was trained with (--tokenizer, a
tokenizer.json or a prepared data folder), checked against the checkpoint's tokenizer hash when it has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import torch

from trainnet.models.checkpoint import CheckpointError, checked_tokenizer, load_checkpoint
from trainnet.models.config import ModelConfig, ModelConfigError


def byte_tokenizer_json() -> str:
    """A tokenizer.json whose 256 tokens are the bytes (id = byte value): BPE without merges, byte-level."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from trainnet.data.tokenizing import _byte_level_decoder

    vocab = {ch: b for ch, b in _byte_level_decoder().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


def _hf_model(mcfg: ModelConfig, params: dict[str, torch.Tensor]) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainnet.models.registry import hf_config, to_hf

    fields = dict(hf_config(mcfg))
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(to_hf(mcfg, params), strict=True)
    return model


def export_hf(checkpoint: str | Path, out: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write the Hugging Face folder for a checkpoint; returns `out`."""
    from transformers import PreTrainedTokenizerFast

    from trainnet.data.tokenizing import HFTokenizer

    model, mcfg = load_checkpoint(checkpoint)
    params = {k: v.detach() for k, v in model.named_parameters()}
    if mcfg.spec == "gpt-bytes" and tokenizer is None and mcfg.vocab_size == 256:
        raw, kind = byte_tokenizer_json(), "bytes"
    elif tokenizer is None:
        raise CheckpointError(f"{checkpoint}: a {mcfg.spec} model with vocab {mcfg.vocab_size} needs --tokenizer "
                              "(its tokenizer.json or the prepared data folder)")
    else:
        tok = checked_tokenizer(checkpoint, tokenizer)
        if not isinstance(tok, HFTokenizer):
            raw, kind = byte_tokenizer_json(), "bytes"
        else:
            raw, kind = tok.raw.decode("utf-8"), "hf"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _hf_model(mcfg, params).save_pretrained(out, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=_from_str(raw))
    if kind == "hf":
        eos = next((t for t in ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>") if fast.convert_tokens_to_ids(t)
                    not in (None, fast.unk_token_id)), None)
        if eos is not None:
            fast.eos_token = eos
    fast.save_pretrained(out)
    return out


def _from_str(raw: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(raw)


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--hf", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the Hugging Face model to.")
@click.option("--tokenizer", type=click.Path(exists=True, path_type=Path), default=None,
              help="tokenizer.json or a prepared data folder (needed for non-byte models).")
def export_cmd(checkpoint: Path, out: Path, tokenizer: Path | None) -> None:
    """Export a checkpoint as a transformers folder (config.json, model.safetensors, tokenizer files)."""
    try:
        path = export_hf(checkpoint, out, tokenizer)
    except (CheckpointError, ModelConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path}: AutoModelForCausalLM.from_pretrained({str(path)!r}) loads it (offline)")
