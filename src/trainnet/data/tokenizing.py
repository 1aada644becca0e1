"""Tokenizers for prepared datasets: the byte tokenizer, or a Hugging Face `tokenizers` tokenizer.json.

    tok = load_tokenizer(None)                    # bytes: token id = byte value, vocab 256
    tok = load_tokenizer("data/prepared/")        # the tokenizer.json in a folder (or a file path)
    tok = train_bpe(texts, vocab_size=4096)       # byte-level BPE trained offline on your own texts
    ids = tok.encode("def f(): pass"); tok.decode(ids); tok.info()   # {"kind", "sha256", "vocab_size", ...}
    lengths = token_byte_lengths(tok)             # UTF-8 bytes each token id stands for (bits per byte)

A tokenizer's identity is the sha256 of its tokenizer.json file bytes (for bytes: of a fixed label), so a
run, its prepared shards and every worker agree on it by hash. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

TOKENIZER_FILE = "tokenizer.json"
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
_BYTES_LABEL = b"trainnet byte tokenizer v1: token id = byte value, vocab 256\n"
BYTES_SHA256 = hashlib.sha256(_BYTES_LABEL).hexdigest()


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or trained; the message names the file or setting."""


class BytesTokenizer:
    """Token id = byte value; documents are separated by the two bytes "\\n\\n" (as the byte corpus)."""

    kind = "bytes"
    vocab_size = 256
    sha256 = BYTES_SHA256
    eos_id: int | None = None
    separator = b"\n\n"

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else bytes(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) & 0xFF for i in ids).decode("utf-8", errors="replace")

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "sha256": self.sha256, "vocab_size": self.vocab_size, "eos_id": None}


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer, identified by the sha256 of its tokenizer.json bytes."""

    kind = "hf"
    separator = b""

    def __init__(self, raw: bytes, where: str = TOKENIZER_FILE) -> None:
        from tokenizers import Tokenizer

        try:
            self._json = json.loads(raw)
            self._tok = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as exc:  # tokenizers raises its own Exception types for malformed files
            raise TokenizerError(f"{where}: not a readable tokenizer.json ({exc})") from None
        self.raw = raw
        self.sha256 = hashlib.sha256(raw).hexdigest()
        vocab = self._tok.get_vocab(with_added_tokens=True)
        # ids, not the count, bound the embedding table: added tokens may sit past the base vocab
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        self.eos_id = next((vocab[t] for t in EOS_CANDIDATES if t in vocab), None)

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        path = Path(path)
        try:
            return cls(path.read_bytes(), str(path))
        except OSError as exc:
            raise TokenizerError(f"cannot read tokenizer {path}: {exc.strerror or exc}") from None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, folder: str | Path) -> Path:
        """Write tokenizer.json into folder, byte for byte (its sha256 is the tokenizer's identity)."""
        out = Path(folder) / TOKENIZER_FILE
        out.write_bytes(self.raw)
        return out

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "sha256": self.sha256, "vocab_size": self.vocab_size, "eos_id": self.eos_id,
                "file": TOKENIZER_FILE}

    @property
    def json(self) -> dict[str, Any]:
        return self._json

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)


Tokenizer = BytesTokenizer | HFTokenizer


def load_tokenizer(spec: str | Path | None) -> Tokenizer:
    """None or "bytes": the byte tokenizer; otherwise a tokenizer.json path or a folder holding one."""
    if spec is None or str(spec) == "bytes":
        return BytesTokenizer()
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"tokenizer: no {TOKENIZER_FILE} in folder {path.parent}")
    elif not path.is_file():
        raise TokenizerError(f"tokenizer: {path} does not exist (give a tokenizer.json or a folder with one)")
    return HFTokenizer.from_file(path)


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: tuple[str, ...] = ("<|endoftext|>",),
              min_frequency: int = 2) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style: lossless on any UTF-8 text) offline; deterministic for the same
    texts. The vocabulary holds the 256 byte symbols, the special tokens and the learned merges."""
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    floor = 256 + len(special_tokens) + 1
    if vocab_size < floor:
        raise TokenizerError(f"bpe vocab size {vocab_size} is too small: needs at least {floor} "
                             f"(256 byte symbols + {len(special_tokens)} special token(s) + 1 merge)")
    if vocab_size > 2**31 - 1:
        raise TokenizerError(f"bpe vocab size {vocab_size} is too large")
    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return HFTokenizer(tok.to_str().encode("utf-8"), f"bpe:{vocab_size}")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (char -> byte value)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + n))
            n += 1
    return {c: b for b, c in enumerate(chars)}


def token_byte_lengths(tok: Tokenizer) -> torch.Tensor:
    """int64 tensor [vocab_size]: how many UTF-8 bytes of text each token id stands for. Exact for the
    byte tokenizer and byte-level BPE (the usual GPT-2/Llama-3/Qwen kind); special tokens count 0 bytes.
    For other tokenizer.json kinds it is len(decode([id]).encode()), an approximation."""
    if isinstance(tok, BytesTokenizer):
        return torch.ones(256, dtype=torch.int64)
    out = torch.zeros(tok.vocab_size, dtype=torch.int64)
    specials = {a["id"] for a in tok.json.get("added_tokens", []) if a.get("special")}
    decoder = tok.json.get("decoder") or {}
    byte_level = decoder.get("type") == "ByteLevel"
    table = _byte_level_decoder()
    for i in range(tok.vocab_size):
        if i in specials:
            continue
        piece = tok.id_to_token(i)
        if piece is None:
            continue
        if byte_level and all(c in table for c in piece):
            out[i] = len(piece)  # one stand-in character per byte
        else:
            out[i] = len(tok.decode([i]).encode("utf-8"))
    return out
