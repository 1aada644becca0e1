"""Text corpora cut into content-hashed shards.

    corpus = load_corpus()                    # the running Python's standard library sources
    corpus = load_corpus("~/my_texts/")       # your own file or folder of text files
    shard = corpus.shard(corpus.manifest.ids("train")[0]); shard.tokens  # uint8 byte tokens

The default corpus needs no download: every `*.py` file under the interpreter's stdlib directory
(site-packages excluded), in sorted path order, concatenated and cut into fixed-size shards. Every
`val_every`-th shard is held out for validation, so the held-out split is spread over the corpus.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainnet.data.manifest import Manifest, ShardEntry, sha256_hex

if TYPE_CHECKING:
    from trainnet.config import RunConfig
    from trainnet.data.token_corpus import TokenCorpus

_SEPARATOR = b"\n\n"
_BINARY_PROBE = 8192


class CorpusError(ValueError):
    """Unusable corpus input; the message names the offending path."""


@dataclass(frozen=True)
class Shard:
    id: int
    data: bytes
    sha256: str

    @property
    def tokens(self) -> torch.Tensor:
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8)


class Corpus:
    def __init__(self, shards: list[bytes], source: str, val_every: int) -> None:
        if val_every < 2:
            raise CorpusError(f"val_every must be >= 2 (got {val_every})")
        entries = []
        for i, data in enumerate(shards):
            split = "val" if (i % val_every) == val_every - 1 else "train"
            entries.append(ShardEntry(id=i, sha256=sha256_hex(data), nbytes=len(data), split=split))
        if not any(e.split == "train" for e in entries) or not any(e.split == "val" for e in entries):
            raise CorpusError(
                f"{source}: {len(shards)} shard(s) is too few for a train/val split with val_every={val_every}; "
                "use more data or smaller data.shard_bytes"
            )
        self._shards = shards
        self.manifest = Manifest(source=source, shards=tuple(entries))

    def __len__(self) -> int:
        return len(self._shards)

    @property
    def nbytes(self) -> int:
        return sum(len(s) for s in self._shards)

    def info(self) -> dict[str, Any]:
        """What a worker needs to read this corpus's shard bytes (same keys as a prepared TokenCorpus)."""
        from trainnet.data.tokenizing import BytesTokenizer

        return {"format": "bytes", "dtype": "uint8", "byteorder": "little", "vocab_size": 256,
                "tokenizer": BytesTokenizer().info(), "root_hash": self.manifest.root_hash,
                "shards": len(self), "ntokens": self.nbytes}

    def shard(self, shard_id: int, expect_sha256: str | None = None) -> Shard:
        entry = self.manifest.entry(shard_id)
        if expect_sha256 is not None and expect_sha256 != entry.sha256:
            raise CorpusError(f"shard {shard_id}: content hash {entry.sha256[:12]} != expected {expect_sha256[:12]}")
        return Shard(id=shard_id, data=self._shards[shard_id], sha256=entry.sha256)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _looks_binary(data: bytes) -> bool:
    probe = data[:_BINARY_PROBE]
    if b"\x00" in probe:
        return True
    try:
        probe.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut by the probe boundary is fine
        return exc.start < len(probe) - 4
    return False


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror or exc}") from None


def _user_files(path: Path) -> tuple[list[Path], list[Path]]:
    """Text files under path, and the binary ones that were skipped."""
    if not path.exists():
        raise CorpusError(f"data path does not exist: {path}")
    if path.is_file():
        data = _read(path)
        if not data:
            raise CorpusError(f"data file is empty: {path}")
        if _looks_binary(data):
            raise CorpusError(f"data file is not text (binary content or not UTF-8): {path}")
        return [path], []
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
    if not files:
        raise CorpusError(f"data folder has no files: {path}")
    text, skipped = [], []
    for f in files:
        (skipped if _looks_binary(_read(f)) else text).append(f)
    if not text:
        raise CorpusError(f"data folder has no text files (all {len(skipped)} look binary): {path}")
    return text, skipped


def load_corpus(
    path: str | os.PathLike | None = None,
    shard_bytes: int = 262_144,
    val_every: int = 50,
    max_bytes: int | None = None,
    min_shard_bytes: int = 0,
) -> Corpus:
    """Read a corpus and cut it into shards of `shard_bytes` (the last, shorter one is kept if it
    holds at least half a shard). `min_shard_bytes` (e.g. the context length + 1) is the smallest
    shard a task can sample from; a corpus whose shards are smaller is rejected with its path."""
    if shard_bytes <= 0:
        raise CorpusError(f"shard_bytes must be positive (got {shard_bytes})")
    if path is None:
        root = stdlib_dir()
        files, skipped = _stdlib_files(root), []
        source = f"python-stdlib:{root}"
        if not files:
            raise CorpusError(f"no .py files found under the standard library directory {root}")
    else:
        root = Path(path).expanduser()
        files, skipped = _user_files(root)
        source = str(root)
    del skipped  # binary files in a folder are skipped on purpose (images, archives beside text)
    chunks, total = [], 0
    for f in files:
        data = _read(f)
        if not data:
            continue
        chunks.append(data)
        chunks.append(_SEPARATOR)
        total += len(data) + len(_SEPARATOR)
        if max_bytes is not None and total >= max_bytes:
            break
    blob = b"".join(chunks)
    if max_bytes is not None:
        blob = blob[:max_bytes]
    if not blob.strip():
        raise CorpusError(f"data at {root} holds no text")
    shards = [blob[i : i + shard_bytes] for i in range(0, len(blob), shard_bytes)]
    if len(shards) > 1 and len(shards[-1]) < shard_bytes // 2:
        shards.pop()
    smallest = min(len(s) for s in shards)
    if smallest < min_shard_bytes:
        raise CorpusError(
            f"{root}: shard of {smallest} bytes is too small for the context length "
            f"(needs at least {min_shard_bytes}); add data or raise data.shard_bytes"
        )
    return Corpus(shards, source=source, val_every=val_every)


def load_run_corpus(cfg: RunConfig) -> Corpus | TokenCorpus:
    """The corpus a run config names (`data.*`), its shards checked against the model's context length.
    The simulator, the sync baseline, the coordinator and the demo report all load it this way.
    A `data.path` folder made by `trainnet data prepare` (it holds manifest.json) is read as prepared
    tokens (data.shard_bytes / val_every / max_bytes do not apply: the manifest fixes the shards), and
    the model is checked against its vocabulary and tokenizer."""
    d = cfg.data
    from trainnet.data.token_corpus import is_prepared, load_prepared

    if is_prepared(d.path):
        corpus = load_prepared(d.path)
        smallest = min(e.ntokens for e in corpus.manifest.shards)
        if smallest < cfg.model.block_size + 2:
            raise CorpusError(f"{d.path}: shard of {smallest} tokens is too small for the context length "
                              f"(needs at least {cfg.model.block_size + 2}); prepare with a larger --shard-tokens")
        from trainnet.models.registry import check_corpus

        check_corpus(cfg.model, corpus.info())
        return corpus
    return load_corpus(d.path, d.shard_bytes, d.val_every, d.max_bytes, min_shard_bytes=cfg.model.block_size + 2)
