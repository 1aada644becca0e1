"""`trainnet data prepare`: stream a dataset source into content-hashed token shards with a manifest.

    corpus = prepare(Path("texts/"), Path("data/prepared"), tokenizer="bpe:4096")   # -> TokenCorpus
    corpus = prepare(Path("rows.jsonl"), out, tokenizer="path/tokenizer.json", field="text")
    corpus = prepare(Path("docs.parquet"), out, tokenizer="bytes", shard_tokens=65_536, val_every=20)
    ids = encode_docs(Path("heldout.jsonl"), load_tokenizer("data/prepared"))   # one stream, no shards

Documents (data/sources.py) are tokenized in order and concatenated, each followed by the tokenizer's
end-of-text token (the byte tokenizer: the two bytes "\\n\\n", as the byte corpus; a tokenizer.json without
one of <|endoftext|>, </s>, ...: the encoded "\\n\\n"), then cut into shards of `shard_tokens` tokens; a
last, shorter shard is kept if it holds at least half a shard. Every `val_every`-th shard is held out.
"bpe:N" trains a byte-level BPE of vocabulary N on the first `bpe_sample_bytes` of the same text first
(a second pass over the source). The same input and settings give the same shards, bit for bit.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from trainnet.data.manifest import sha256_hex
from trainnet.data.sources import Doc, Progress, SourceError, check_source, iter_docs, source_size
from trainnet.data.token_corpus import (
    DTYPES,
    FORMAT,
    MANIFEST_FILE,
    TokenCorpus,
    TokenManifest,
    TokenShardEntry,
    dtype_for_vocab,
    load_prepared,
)
from trainnet.data.tokenizing import (
    BytesTokenizer,
    HFTokenizer,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
    token_byte_lengths,
    train_bpe,
)

ENCODE_BATCH_CHARS = 1 << 20  # text per encode_batch call


class _Shards:
    """Accumulates token arrays and writes full shards to out/shards/NNNNNN.bin."""

    def __init__(self, folder: Path, shard_tokens: int, dtype: str, byte_len: torch.Tensor) -> None:
        self.folder, self.shard_tokens, self.dtype = folder, shard_tokens, DTYPES[dtype]
        self.byte_len = byte_len.numpy()
        self.pending: list[np.ndarray] = []
        self.npending = 0
        self.rows: list[tuple[str, int, int, int]] = []  # (sha256, nbytes, ntokens, text_bytes)
        self.total = 0

    def add(self, ids: np.ndarray) -> None:
        self.pending.append(ids.astype(self.dtype, copy=False))
        self.npending += ids.size
        self.total += ids.size
        while self.npending >= self.shard_tokens:
            flat = np.concatenate(self.pending)
            self._write(flat[: self.shard_tokens])
            rest = flat[self.shard_tokens:]
            self.pending, self.npending = ([rest] if rest.size else []), rest.size

    def finish(self) -> None:
        if self.npending and (self.npending >= self.shard_tokens // 2 or not self.rows):
            self._write(np.concatenate(self.pending))
        self.pending, self.npending = [], 0

    def _write(self, tokens: np.ndarray) -> None:
        data = tokens.astype(self.dtype).tobytes()  # explicit little-endian dtype: the same bytes everywhere
        (self.folder / f"{len(self.rows):06d}.bin").write_bytes(data)
        text_bytes = int(self.byte_len[tokens.astype(np.int64)].sum())
        self.rows.append((sha256_hex(data), len(data), int(tokens.size), text_bytes))


def _make_tokenizer(spec: str, src: Path, field: str, split: str | None, sample_bytes: int,
                    progress: Progress) -> Tokenizer:
    if spec.startswith("bpe:"):
        try:
            vocab = int(spec[4:])
        except ValueError:
            raise TokenizerError(f"--tokenizer {spec!r}: expected bpe:VOCAB_SIZE, e.g. bpe:4096") from None

        def sample() -> Iterator[str]:
            seen = 0
            for doc in iter_docs(src, field, split, raw=False, progress=progress):
                if seen >= sample_bytes:
                    return
                text = doc.text if isinstance(doc.text, str) else doc.text.decode("utf-8")
                seen += len(text)
                yield text

        return train_bpe(sample(), vocab)
    return load_tokenizer(spec)


def _separator(tok: Tokenizer) -> np.ndarray:
    if isinstance(tok, BytesTokenizer):
        return np.frombuffer(tok.separator, dtype=np.uint8).astype(np.int64)
    if tok.eos_id is not None:
        return np.array([tok.eos_id], dtype=np.int64)
    return np.array(tok.encode("\n\n"), dtype=np.int64)


def _encode_stream(docs: Iterator[Doc], tok: Tokenizer) -> Iterator[np.ndarray]:
    """Token arrays for the documents in order, each document followed by the separator."""
    sep = _separator(tok)
    if isinstance(tok, BytesTokenizer):
        open_doc = False
        for doc in docs:
            data = doc.text.encode("utf-8") if isinstance(doc.text, str) else doc.text
            if data:
                open_doc = True
                yield np.frombuffer(data, dtype=np.uint8)
            if doc.last and open_doc:  # an empty file adds nothing, as in the byte corpus
                yield sep
                open_doc = False
        return
    assert isinstance(tok, HFTokenizer)
    batch: list[Doc] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if chars >= ENCODE_BATCH_CHARS:
            yield from _encode_batch(batch, tok, sep)
            batch, chars = [], 0
    yield from _encode_batch(batch, tok, sep)


def _encode_batch(batch: list[Doc], tok: HFTokenizer, sep: np.ndarray) -> Iterator[np.ndarray]:
    texts = [d.text if isinstance(d.text, str) else d.text.decode("utf-8") for d in batch]
    for doc, ids in zip(batch, tok.encode_batch(texts), strict=True):
        if ids:
            yield np.asarray(ids, dtype=np.int64)
        if doc.last:
            yield sep


def encode_docs(src: Path, tok: Tokenizer, field: str = "text", split: str | None = None) -> np.ndarray:
    """The whole token stream prepare() would cut into shards for `src` and tokenizer `tok` (each document
    followed by the separator), as one int64 array: e.g. a held-out text for models.units.evaluate_stream."""
    src = src.expanduser()
    check_source(src, field, split)
    docs = iter_docs(src, field, split, raw=isinstance(tok, BytesTokenizer))
    parts = list(_encode_stream(docs, tok))
    if not parts:
        raise SourceError(f"{src}: no text to tokenize (empty dataset)")
    return np.concatenate(parts).astype(np.int64, copy=False)


_OURS = {"shards", "tokenizer.json", MANIFEST_FILE + ".tmp"}  # what prepare writes before the manifest


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that holds anything but a prepared dataset (or the debris of an unfinished one)."""
    if out.exists() and not out.is_dir():
        raise SourceError(f"--out {out} is a file, not a folder")
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if MANIFEST_FILE in names:
        if not overwrite:
            raise SourceError(f"--out {out} already holds a prepared dataset (pass --overwrite to replace it)")
        names.discard(MANIFEST_FILE)
    if names - _OURS:
        raise SourceError(f"--out {out} is a non-empty folder that holds no prepared dataset; choose another")


def _reset_out(out: Path) -> None:
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    shutil.rmtree(out / "shards", ignore_errors=True)
    (out / "tokenizer.json").unlink(missing_ok=True)
    (out / "shards").mkdir(parents=True)


def prepare(src: Path, out: Path, tokenizer: str = "bytes", field: str = "text", split: str | None = None,
            shard_tokens: int = 131_072, val_every: int = 50, max_tokens: int | None = None,
            bpe_sample_bytes: int = 256 << 20, overwrite: bool = False, quiet: bool = True) -> TokenCorpus:
    """Tokenize `src` into `out` (see the module docstring) and return the prepared corpus."""
    if shard_tokens < 2:
        raise SourceError(f"--shard-tokens must be at least 2 (got {shard_tokens})")
    if val_every < 2:
        raise SourceError(f"--val-every must be at least 2 (got {val_every})")
    src, out = src.expanduser(), out.expanduser()
    if not src.exists():
        raise SourceError(f"data source does not exist: {src}")
    from trainnet.data.progress import prepare_progress

    _check_out(out, overwrite)  # before the long work
    check_source(src, field, split)
    with prepare_progress(source_size(src), quiet) as bar:
        tok = _make_tokenizer(tokenizer, src, field, split, bpe_sample_bytes, bar.phase("training BPE"))
        _reset_out(out)
        dtype = dtype_for_vocab(tok.vocab_size)
        shards = _Shards(out / "shards", shard_tokens, dtype, token_byte_lengths(tok))
        step = bar.phase("tokenizing")
        try:
            stream = _encode_stream(iter_docs(src, field, split, raw=isinstance(tok, BytesTokenizer), progress=step),
                                    tok)
            for ids in stream:
                if max_tokens is not None and shards.total + ids.size > max_tokens:
                    shards.add(ids[: max_tokens - shards.total])
                    break
                shards.add(ids)
                bar.tokens(shards.total)
            shards.finish()
            if not shards.rows:
                raise SourceError(f"{src}: no text to tokenize (empty dataset)")
        except BaseException:
            shutil.rmtree(out / "shards", ignore_errors=True)  # no half-written dataset is left behind
            raise
    entries = [TokenShardEntry(id=i, sha256=h, nbytes=nb, split="val" if i % val_every == val_every - 1 else "train",
                               ntokens=nt, text_bytes=tb) for i, (h, nb, nt, tb) in enumerate(shards.rows)]
    if not any(e.split == "val" for e in entries):
        raise SourceError(f"{src}: {len(entries)} shard(s) is too few for a held-out split with val_every={val_every};"
                          " use more data, a smaller --shard-tokens or a smaller --val-every")
    if isinstance(tok, HFTokenizer):
        tok.save(out)
    man = TokenManifest(source=str(src), shards=tuple(entries), dtype=dtype, tokenizer_sha256=tok.sha256)
    meta = {"format": FORMAT, "source": str(src), "field": field, "split": split, "dtype": dtype,
            "byteorder": "little", "tokenizer": tok.info(), "tokenizer_spec": tokenizer, "shard_tokens": shard_tokens,
            "val_every": val_every, "ntokens": sum(e.ntokens for e in entries),
            "text_bytes": sum(e.text_bytes for e in entries), "root_hash": man.root_hash,
            "shards": [{"id": e.id, "sha256": e.sha256, "nbytes": e.nbytes, "ntokens": e.ntokens,
                        "text_bytes": e.text_bytes, "split": e.split, "file": f"shards/{e.id:06d}.bin"} for e in entries]}
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(out / MANIFEST_FILE)  # the manifest appears last: a folder with one is complete
    return load_prepared(out)
