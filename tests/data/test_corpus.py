from __future__ import annotations

from pathlib import Path

import pytest

from trainnet.data import ByteTokenizer, CorpusError, load_corpus


def test_stdlib_corpus_is_deterministic_and_hashed(small_corpus):
    again = load_corpus(None, shard_bytes=32_768, val_every=8, max_bytes=1_048_576)
    assert again.manifest.root_hash == small_corpus.manifest.root_hash
    assert len(small_corpus) == 32
    assert small_corpus.manifest.ids("val") == [7, 15, 23, 31]
    shard = small_corpus.shard(3)
    assert shard.tokens.numel() == 32_768
    assert b"def " in shard.data or b"import" in shard.data  # it is Python source


def test_manifest_root_changes_with_any_shard(tmp_path: Path):
    (tmp_path / "a.txt").write_text("hello world " * 2000)
    first = load_corpus(tmp_path, shard_bytes=1000, val_every=4)
    (tmp_path / "a.txt").write_text("hello world " * 1999 + "hello wXrld ")
    second = load_corpus(tmp_path, shard_bytes=1000, val_every=4)
    assert first.manifest.root_hash != second.manifest.root_hash
    changed = [a.id for a, b in zip(first.manifest.shards, second.manifest.shards, strict=True) if a.sha256 != b.sha256]
    assert changed == [len(first) - 1]


def test_shard_hash_is_checked(small_corpus):
    with pytest.raises(CorpusError, match="content hash"):
        small_corpus.shard(0, expect_sha256="0" * 64)


def test_empty_folder_names_path(tmp_path: Path):
    with pytest.raises(CorpusError, match=str(tmp_path)):
        load_corpus(tmp_path)


def test_binary_file_is_rejected_with_path(tmp_path: Path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 100)
    with pytest.raises(CorpusError, match="junk.bin"):
        load_corpus(junk)


def test_folder_of_only_binary_is_rejected(tmp_path: Path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\x00\x00" * 100)
    with pytest.raises(CorpusError, match="no text files"):
        load_corpus(tmp_path)


def test_binary_files_in_a_text_folder_are_skipped(tmp_path: Path):
    (tmp_path / "a.txt").write_text("some text " * 500)
    (tmp_path / "b.png").write_bytes(b"\x89PNG\x00\x00" * 100)
    corpus = load_corpus(tmp_path, shard_bytes=1000, val_every=2)
    assert b"PNG" not in b"".join(corpus.shard(i).data for i in range(len(corpus)))


def test_unreadable_file_names_path(tmp_path: Path, monkeypatch):
    target = tmp_path / "secret.txt"
    target.write_text("text " * 100)
    real = Path.read_bytes

    def deny(self: Path) -> bytes:
        if self.name == "secret.txt":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(CorpusError, match="secret.txt"):
        load_corpus(tmp_path)


def test_missing_path(tmp_path: Path):
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(tmp_path / "nope")


def test_shard_too_small_for_context(tmp_path: Path):
    (tmp_path / "a.txt").write_text("x" * 400)
    with pytest.raises(CorpusError, match="too small for the context length"):
        load_corpus(tmp_path, shard_bytes=50, val_every=2, min_shard_bytes=66)


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "def f(x):\n    return 'é' * x\n"
    ids = tok.encode(text)
    assert ids.max() < 256 and tok.decode(ids) == text
