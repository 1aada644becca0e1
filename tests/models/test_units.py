"""Held-out loss in nats/token and bits/byte, so byte and BPE models compare."""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import pytest
import torch
from shapes import gpt

from trainnet.data.tokenizing import BytesTokenizer, token_byte_lengths, train_bpe
from trainnet.models import build_model, loss_units
from trainnet.models.units import evaluate_units
from trainnet.train.local import evaluate, params_of

TEXTS = [p.read_text() for p in sorted(Path(sysconfig.get_paths()["stdlib"], "json").glob("*.py"))]


def test_loss_units_formula():
    u = loss_units(2.0, tokens=100, nbytes=100)
    assert u["bits_per_byte"] == pytest.approx(2.0 / math.log(2)) == u["bits_per_token"]
    bpe = loss_units(3.0, tokens=100, nbytes=350)  # 3.5 bytes per token
    assert bpe["bits_per_byte"] == pytest.approx(3.0 * 100 / (350 * math.log(2)))
    assert bpe["bytes_per_token"] == 3.5 and bpe["nats_per_token"] == 3.0
    with pytest.raises(ValueError, match="positive"):
        loss_units(1.0, tokens=0, nbytes=5)


def test_evaluate_units_uses_evaluates_windows(small_corpus):
    model = build_model(gpt(), seed=0)
    params = params_of(model)
    val = [small_corpus.shard(i).tokens for i in small_corpus.manifest.ids("val")]
    mean = evaluate(model, params, val, batches=3, batch_size=4, seq_len=32)
    units = evaluate_units(model, params, val, batches=3, batch_size=4, seq_len=32,
                           token_bytes=token_byte_lengths(BytesTokenizer()))
    assert units["nats_per_token"] == pytest.approx(mean, rel=1e-5)
    assert units["tokens"] == units["bytes"] == 3 * 4 * 32  # bytes: one per byte token
    assert units["bits_per_byte"] == pytest.approx(mean / math.log(2), rel=1e-5)


def test_bpe_byte_lengths_are_exact():
    tok = train_bpe(TEXTS, vocab_size=600)
    lengths = token_byte_lengths(tok)
    assert lengths.shape == (tok.vocab_size,) and int(lengths[tok.eos_id]) == 0  # special: 0 bytes
    for text in (TEXTS[0][:3000], "naïve café → 数据 🙂\n\tdef f(): pass"):
        ids = tok.encode(text)
        assert int(lengths[torch.tensor(ids)].sum()) == len(text.encode("utf-8"))
        assert len(ids) < len(text.encode("utf-8"))  # merges were learned


def test_evaluate_stream_covers_every_token_once():
    """Windows of seq_len + 1 overlapping by one: every token but the first is a target once (tail included),
    the same total as one pass of a model with a long enough context; bytes from the table."""
    import torch.nn.functional as F

    model = build_model(gpt(block_size=64), seed=0).eval()
    data = TEXTS[0][:1000].encode()
    tokens = torch.tensor(list(data))
    from trainnet.models.units import evaluate_stream

    u = evaluate_stream(model, None, tokens, seq_len=32, token_bytes=token_byte_lengths(BytesTokenizer()),
                        batch_size=5)
    assert u["tokens"] == u["bytes"] == len(data) - 1
    nats = 0.0
    for s in range(0, len(data) - 1, 32):
        w = tokens[s:s + 33].long()
        with torch.no_grad():
            logits = model(w[None, :-1])[0]
        nats += float(F.cross_entropy(logits[0], w[1:], reduction="sum"))
    assert u["nats_per_token"] == pytest.approx(nats / (len(data) - 1), rel=1e-5)
    assert u["bits_per_byte"] == pytest.approx(u["nats_per_token"] / math.log(2), rel=1e-6)
    tok = train_bpe(TEXTS, vocab_size=600)
    ids = torch.tensor(tok.encode(TEXTS[1]))
    llama_like = build_model(gpt(block_size=64, vocab_size=600), seed=0)
    b = evaluate_stream(llama_like, None, ids, seq_len=64, token_bytes=token_byte_lengths(tok))
    assert b["tokens"] == ids.numel() - 1 and b["bytes"] == len(tok.decode(ids[1:].tolist()).encode())
    with pytest.raises(ValueError, match="at least 2 tokens"):
        evaluate_stream(model, None, tokens[:1], seq_len=32, token_bytes=token_byte_lengths(BytesTokenizer()))
