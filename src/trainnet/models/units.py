"""Held-out loss in units that compare across tokenizers: nats per token and bits per byte.

    loss_units(2.1, tokens=4096, nbytes=4096)   # {"nats_per_token": 2.1, "bits_per_byte": 3.03, ...}
    evaluate_units(model, params, val_tokens, batches=8, batch_size=16, seq_len=64,
                   token_bytes=token_byte_lengths(tokenizer))   # the same windows as train.local.evaluate
    evaluate_stream(model, params, tokens, seq_len=64, token_bytes=...)   # every token of a text, once

Byte count convention: the UTF-8 bytes of the text the evaluated target tokens decode to, summed token by
token with `data.tokenizing.token_byte_lengths` (exact for the byte tokenizer and byte-level BPE; special
tokens such as <|endoftext|> count 0 bytes). bits/byte = nats/token * tokens / (bytes * ln 2); for the byte
tokenizer bytes = tokens, so bits/byte = nats/token / ln 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def loss_units(nats_per_token: float, tokens: int, nbytes: int) -> dict[str, float]:
    """Mean loss over `tokens` evaluated tokens that stand for `nbytes` bytes of text, in both units."""
    if tokens <= 0 or nbytes <= 0:
        raise ValueError(f"tokens and bytes must be positive (got tokens={tokens}, bytes={nbytes})")
    return {"nats_per_token": float(nats_per_token),
            "bits_per_token": float(nats_per_token) / math.log(2),
            "bits_per_byte": float(nats_per_token) * tokens / (nbytes * math.log(2)),
            "bytes_per_token": nbytes / tokens, "tokens": int(tokens), "bytes": int(nbytes)}


@torch.no_grad()
def evaluate_units(
    model: nn.Module, params: dict[str, torch.Tensor], val_tokens: list[torch.Tensor], batches: int,
    batch_size: int, seq_len: int, token_bytes: torch.Tensor, seed: int = 1234, device: str | torch.device = "cpu",
) -> dict[str, float]:
    """train.local.evaluate's held-out windows (same seed, same windows), reported by loss_units: total nats
    over every target token, and the bytes those targets stand for."""
    from trainnet.train.local import load_params, sample_batch

    load_params(model, params)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    nats, tokens, nbytes = 0.0, 0, 0
    table = token_bytes.to(torch.int64)
    for b in range(batches):
        x, y = sample_batch(val_tokens[b % len(val_tokens)], batch_size, seq_len, gen)
        out = model(x.to(device), y.to(device))
        logits = out[0] if isinstance(out, tuple) and isinstance(out[0], torch.Tensor) and out[0].dim() == 3 else None
        if logits is not None:
            nats += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1).to(device),
                                          reduction="sum"))
        else:  # a model that returns only its mean loss
            loss = out[-1] if isinstance(out, tuple) else out
            nats += float(loss) * y.numel()
        tokens += y.numel()
        if int(y.max()) >= table.numel():
            raise ValueError(f"token id {int(y.max())} is outside the byte-length table ({table.numel()} ids)")
        nbytes += int(table[y].sum())
    model.train()
    return loss_units(nats / tokens, tokens, nbytes)


@torch.no_grad()
def evaluate_stream(
    model: nn.Module, params: dict[str, torch.Tensor] | None, tokens: torch.Tensor, seq_len: int,
    token_bytes: torch.Tensor, batch_size: int = 16, device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Every token of `tokens` (one held-out text, e.g. data.prepare.encode_docs) but the first is a target
    exactly once: consecutive windows of seq_len + 1 tokens overlapping by one (each window starts with no
    earlier context; a last window shorter than seq_len + 1 is evaluated at its own length). Deterministic,
    no sampling, so two models (two tokenizers) evaluated on the same text see the same bytes: the figure to
    compare byte and BPE models by (bits/byte), reported by loss_units. `params` None: the model's own."""
    if params is not None:
        from trainnet.train.local import load_params

        load_params(model, params)
    tokens = tokens.reshape(-1).to(torch.int64)
    if tokens.numel() < 2:
        raise ValueError(f"need at least 2 tokens to evaluate, got {tokens.numel()}")
    table = token_bytes.to(torch.int64)
    if int(tokens.max()) >= table.numel():
        raise ValueError(f"token id {int(tokens.max())} is outside the byte-length table ({table.numel()} ids)")
    was_training = model.training
    model.eval()
    starts = list(range(0, tokens.numel() - 1, seq_len))
    full = [s for s in starts if s + seq_len + 1 <= tokens.numel()]
    nats, count = 0.0, 0
    for i in range(0, len(full), batch_size):
        win = torch.stack([tokens[s:s + seq_len + 1] for s in full[i:i + batch_size]])
        nats += _sum_nats(model, win[:, :-1].to(device), win[:, 1:].to(device))
        count += win.size(0) * seq_len
    if len(full) < len(starts):  # the tail
        win = tokens[starts[-1]:][None, :]
        nats += _sum_nats(model, win[:, :-1].to(device), win[:, 1:].to(device))
        count += win.size(1) - 1
    if was_training:
        model.train()
    assert count == tokens.numel() - 1
    return loss_units(nats / count, count, int(table[tokens[1:]].sum()))


def _sum_nats(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    out = model(x, y)
    logits = out[0] if isinstance(out, tuple) else out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise TypeError("evaluate_stream needs a model whose forward returns (logits, loss)")
    return float(F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="sum"))
