"""Prepared token datasets (`trainnet data prepare`), read with the byte corpus's interface.

    corpus = load_prepared("data/prepared/")          # or data.load_run_corpus(cfg) with data.path = that folder
    corpus.manifest.ids("train"); corpus.manifest.entry(3).sha256; corpus.manifest.root_hash
    shard = corpus.shard(3, expect_sha256=...)         # shard.data: the file's exact bytes; shard.tokens: int tensor
    corpus.info()                                      # JSON-able: what a worker needs (dtype, vocab, tokenizer sha256)
    tokens = tokens_from_bytes(data, info["dtype"])    # a worker's tokens from shard bytes sent over the network

On disk: DIR/manifest.json, DIR/tokenizer.json (unless the byte tokenizer), DIR/shards/NNNNNN.bin: raw
little-endian token ids (uint8 for the byte tokenizer, uint16 for vocabularies up to 65,535, else uint32),
memory-mapped on read. A shard's sha256 is of its file bytes, which are what the coordinator serves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainnet.data.manifest import Manifest, ShardEntry

MANIFEST_FILE = "manifest.json"
FORMAT = "trainnet-tokens/1"
DTYPES = {"uint8": np.dtype("<u1"), "uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class PreparedDataError(ValueError):
    """A prepared dataset or shard that cannot be used; the message names the file (and shard)."""


def dtype_for_vocab(vocab_size: int) -> str:
    """Smallest token dtype for a vocabulary: uint8 (<= 256), uint16 (<= 65,535), else uint32."""
    return "uint8" if vocab_size <= 256 else "uint16" if vocab_size <= 65_535 else "uint32"


def tokens_from_bytes(data: bytes, dtype: str, vocab_size: int | None = None) -> torch.Tensor:
    """Token ids from raw shard bytes: uint8 stays a uint8 tensor (as the byte corpus), uint16 becomes int32
    and uint32 int64 (torch indexes those; its uint16/uint32 support is limited). With vocab_size, an id
    outside the vocabulary raises instead of failing later inside an embedding."""
    if dtype not in DTYPES:
        raise PreparedDataError(f"unknown token dtype {dtype!r} (known: {', '.join(DTYPES)})")
    np_dtype = DTYPES[dtype]
    if len(data) % np_dtype.itemsize:
        raise PreparedDataError(f"shard of {len(data)} bytes is not a whole number of {dtype} tokens")
    arr = np.frombuffer(data, dtype=np_dtype)
    return _to_torch(arr, dtype, vocab_size)


def _to_torch(arr: np.ndarray, dtype: str, vocab_size: int | None) -> torch.Tensor:
    if vocab_size is not None and arr.size and int(arr.max()) >= vocab_size:
        raise PreparedDataError(f"token id {int(arr.max())} is outside the vocabulary ({vocab_size})")
    if dtype == "uint8":
        return torch.from_numpy(arr.copy())
    return torch.from_numpy(arr.astype(np.int32 if dtype == "uint16" else np.int64))


@dataclass(frozen=True)
class TokenShardEntry(ShardEntry):
    ntokens: int = 0
    text_bytes: int = 0  # UTF-8 bytes of the text these tokens decode to


@dataclass(frozen=True)
class TokenManifest(Manifest):
    dtype: str = "uint16"
    tokenizer_sha256: str = ""

    @property
    def root_hash(self) -> str:
        """sha256 over the token format and the ordered (id, hash, size, split) list."""
        h = hashlib.sha256(f"{FORMAT}:{self.dtype}:{self.tokenizer_sha256}\n".encode())
        for s in self.shards:
            h.update(f"{s.id}:{s.sha256}:{s.nbytes}:{s.split}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class TokenShard:
    id: int
    sha256: str
    path: Path
    dtype: str

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def tokens(self) -> torch.Tensor:
        arr = np.memmap(self.path, dtype=DTYPES[self.dtype], mode="r")
        return _to_torch(np.asarray(arr), self.dtype, None)


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise PreparedDataError(f"{where}: missing field {key!r}")
    v = obj[key]
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise PreparedDataError(f"{where}: field {key!r} has the wrong type ({type(v).__name__})")
    return v


class TokenCorpus:
    """A prepared dataset: the byte Corpus's read interface, plus info() and tokenizer()."""

    def __init__(self, root: Path, meta: dict[str, Any]) -> None:
        where = str(root / MANIFEST_FILE)
        if meta.get("format") != FORMAT:
            raise PreparedDataError(f"{where}: format {meta.get('format')!r} is not {FORMAT!r}")
        self.root = root
        self.dtype = _field(meta, "dtype", str, where)
        if self.dtype not in DTYPES:
            raise PreparedDataError(f"{where}: unknown dtype {self.dtype!r}")
        self.tokenizer_info: dict[str, Any] = _field(meta, "tokenizer", dict, where)
        self.vocab_size = int(_field(self.tokenizer_info, "vocab_size", int, where + " tokenizer"))
        entries = []
        for i, s in enumerate(_field(meta, "shards", list, where)):
            at = f"{where} shards[{i}]"
            if not isinstance(s, dict):
                raise PreparedDataError(f"{at}: expected an object")
            e = TokenShardEntry(id=_field(s, "id", int, at), sha256=_field(s, "sha256", str, at),
                                nbytes=_field(s, "nbytes", int, at), split=_field(s, "split", str, at),
                                ntokens=_field(s, "ntokens", int, at), text_bytes=_field(s, "text_bytes", int, at))
            if e.id != i or e.split not in ("train", "val") or e.nbytes != e.ntokens * DTYPES[self.dtype].itemsize:
                raise PreparedDataError(f"{at}: inconsistent entry (id {e.id}, split {e.split!r}, {e.nbytes} bytes "
                                        f"for {e.ntokens} {self.dtype} tokens)")
            f = self._path(e.id)
            if not f.is_file() or f.stat().st_size != e.nbytes:
                raise PreparedDataError(f"{f}: shard file missing or not {e.nbytes} bytes (shards[{i}] in {where})")
            entries.append(e)
        if not entries:
            raise PreparedDataError(f"{where}: no shards")
        self.manifest = TokenManifest(source=str(meta.get("source", root)), shards=tuple(entries), dtype=self.dtype,
                                      tokenizer_sha256=_field(self.tokenizer_info, "sha256", str, where + " tokenizer"))
        stored = meta.get("root_hash")
        if stored is not None and stored != self.manifest.root_hash:
            raise PreparedDataError(f"{where}: root_hash {str(stored)[:12]} does not match its shards "
                                    f"({self.manifest.root_hash[:12]}); the manifest was edited")
        self._verified: set[int] = set()

    def _path(self, shard_id: int) -> Path:
        return self.root / "shards" / f"{shard_id:06d}.bin"

    def __len__(self) -> int:
        return len(self.manifest.shards)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.manifest.shards)

    @property
    def ntokens(self) -> int:
        return sum(s.ntokens for s in self.manifest.shards)

    def shard(self, shard_id: int, expect_sha256: str | None = None) -> TokenShard:
        """Shard by id. Its file is hashed once per corpus object and checked against the manifest."""
        entry = self.manifest.entry(shard_id)
        if expect_sha256 is not None and expect_sha256 != entry.sha256:
            raise PreparedDataError(f"shard {shard_id}: content hash {entry.sha256[:12]} != expected {expect_sha256[:12]}")
        path = self._path(shard_id)
        if shard_id not in self._verified:
            got = hashlib.sha256(path.read_bytes()).hexdigest()
            if got != entry.sha256:
                raise PreparedDataError(f"{path}: sha256 {got[:12]} != manifest's {entry.sha256[:12]} (file changed)")
            self._verified.add(shard_id)
        return TokenShard(id=shard_id, sha256=entry.sha256, path=path, dtype=self.dtype)

    def info(self) -> dict[str, Any]:
        """What a worker needs to turn shard bytes into tokens and to check them (JSON-able)."""
        return {"format": FORMAT, "dtype": self.dtype, "byteorder": "little", "vocab_size": self.vocab_size,
                "tokenizer": dict(self.tokenizer_info), "root_hash": self.manifest.root_hash,
                "shards": len(self), "ntokens": self.ntokens}

    def tokenizer(self) -> Any:
        """The dataset's tokenizer (data.tokenizing), its hash checked against the manifest."""
        from trainnet.data.tokenizing import load_tokenizer

        tok = load_tokenizer(None if self.tokenizer_info.get("kind") == "bytes" else self.root)
        if tok.sha256 != self.manifest.tokenizer_sha256:
            raise PreparedDataError(f"{self.root}: tokenizer.json sha256 {tok.sha256[:12]} != manifest's "
                                    f"{self.manifest.tokenizer_sha256[:12]}")
        return tok


def is_prepared(path: str | Path | None) -> bool:
    return path is not None and (Path(path).expanduser() / MANIFEST_FILE).is_file()


def load_prepared(path: str | Path) -> TokenCorpus:
    root = Path(path).expanduser()
    where = root / MANIFEST_FILE
    try:
        meta = json.loads(where.read_text())
    except OSError as exc:
        raise PreparedDataError(f"cannot read {where}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PreparedDataError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise PreparedDataError(f"{where}: expected a JSON object")
    return TokenCorpus(root, meta)
