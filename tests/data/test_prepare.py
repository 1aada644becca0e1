"""`trainnet data prepare`: text, jsonl, parquet and datasets folders into content-hashed token shards."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from trainnet.data.cli import data_cmd
from trainnet.data.corpus import load_corpus
from trainnet.data.prepare import prepare
from trainnet.data.token_corpus import TokenCorpus, load_prepared, tokens_from_bytes

STDLIB_JSON = Path(sysconfig.get_paths()["stdlib"]) / "json"  # ~50 KB of real text, read-only
DOCS = [p.read_text() for p in sorted(STDLIB_JSON.glob("*.py"))]


def _hashes(c: TokenCorpus) -> list[str]:
    return [e.sha256 for e in c.manifest.shards]


def _rows(tmp_path: Path) -> list[dict]:
    return [{"id": i, "text": t} for i, t in enumerate(DOCS)]


def test_bytes_tokenizer_gives_the_byte_corpus_shards(tmp_path: Path):
    prepared = prepare(STDLIB_JSON, tmp_path / "out", tokenizer="bytes", shard_tokens=4000, val_every=4)
    corpus = load_corpus(STDLIB_JSON, shard_bytes=4000, val_every=4)
    assert prepared.dtype == "uint8" and _hashes(prepared) == [e.sha256 for e in corpus.manifest.shards]
    assert prepared.manifest.ids("val") == corpus.manifest.ids("val")
    assert torch.equal(prepared.shard(2).tokens, corpus.shard(2).tokens)


def test_same_input_same_shards_and_root(tmp_path: Path):
    a = prepare(STDLIB_JSON, tmp_path / "a", tokenizer="bpe:700", shard_tokens=1500, val_every=3)
    b = prepare(STDLIB_JSON, tmp_path / "b", tokenizer="bpe:700", shard_tokens=1500, val_every=3)
    assert a.manifest.root_hash == b.manifest.root_hash and _hashes(a) == _hashes(b)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    c = prepare(STDLIB_JSON, tmp_path / "c", tokenizer="bpe:701", shard_tokens=1500, val_every=3)
    assert c.manifest.root_hash != a.manifest.root_hash


def test_bpe_shards_decode_to_the_source_text(tmp_path: Path):
    corpus = prepare(STDLIB_JSON, tmp_path / "out", tokenizer="bpe:800", shard_tokens=2000, val_every=3)
    info = corpus.info()
    assert info["dtype"] == "uint16" and info["vocab_size"] == 800 and info["tokenizer"]["kind"] == "hf"
    tok = corpus.tokenizer()
    first = tok.decode(corpus.shard(0).tokens.tolist())
    assert first == DOCS[0][: len(first)] and len(first) > 2000  # lossless, and compressed (> 1 byte/token)
    assert sum(e.text_bytes for e in corpus.manifest.shards) > corpus.ntokens


def test_jsonl_parquet_and_datasets_give_identical_shards(tmp_path: Path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(tmp_path)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]}),
                   tmp_path / "rows.parquet", row_group_size=2)
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"text": [r["text"] for r in rows]}).save_to_disk(str(tmp_path / "saved"))
    tok = str(tmp_path / "tok")
    first = prepare(tmp_path / "rows.jsonl", tmp_path / "tok", tokenizer="bpe:600", shard_tokens=1000, val_every=3)
    out = [prepare(tmp_path / src, tmp_path / f"out{i}", tokenizer=tok, shard_tokens=1000, val_every=3)
           for i, src in enumerate(("rows.jsonl", "rows.parquet", "saved"))]
    assert _hashes(out[0]) == _hashes(out[1]) == _hashes(out[2]) == _hashes(first)
    # every document ends with the end-of-text token (the last one may sit in a dropped short tail)
    eos = first.tokenizer_info["eos_id"]
    count = sum(int((first.shard(i).tokens == eos).sum()) for i in range(len(first)))
    assert count in (len(DOCS) - 1, len(DOCS))


def test_a_folder_mixes_kinds_in_path_order(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(DOCS[0])
    (src / "b.jsonl").write_text(json.dumps({"text": DOCS[1]}) + "\n")
    (src / "c.bin").write_bytes(b"\x00\x01" * 500)  # binary: skipped, as the byte corpus does
    corpus = prepare(src, tmp_path / "out", tokenizer="bytes", shard_tokens=512, val_every=2)
    data = b"".join(corpus.shard(i).data for i in range(len(corpus)))
    assert data.startswith(DOCS[0].encode()[:512]) and b"\x00\x01" not in data


def test_uint32_for_large_vocabularies(tmp_path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)} | {"[UNK]": 70_000}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "t.txt").write_text(" ".join(f"w{(i * 7919) % 70_000}" for i in range(3000)))
    corpus = prepare(tmp_path / "t.txt", tmp_path / "out", tokenizer=str(tmp_path), shard_tokens=500, val_every=2)
    assert corpus.dtype == "uint32"
    shard = corpus.shard(0)
    assert shard.tokens.dtype == torch.int64 and int(shard.tokens.max()) >= 65_536
    assert torch.equal(tokens_from_bytes(shard.data, "uint32"), shard.tokens)


def test_max_tokens_and_overwrite(tmp_path: Path):
    out = tmp_path / "out"
    small = prepare(STDLIB_JSON, out, shard_tokens=1000, val_every=2, max_tokens=4000)
    assert small.ntokens == 4000 and len(small) == 4
    with pytest.raises(ValueError, match="--overwrite"):
        prepare(STDLIB_JSON, out, shard_tokens=1000, val_every=2)
    again = prepare(STDLIB_JSON, out, shard_tokens=1000, val_every=2, max_tokens=3000, overwrite=True)
    assert len(again) == 3 and not (out / "shards" / "000003.bin").exists()


def test_cli_prepare_and_info(tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(data_cmd, ["prepare", str(STDLIB_JSON), "--out", str(tmp_path / "o"), "--tokenizer",
                                   "bpe:500", "--shard-tokens", "2000", "--val-every", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "shards" in res.output and "root hash" in res.output
    res = runner.invoke(data_cmd, ["info", str(tmp_path / "o"), "--json"])
    info = json.loads(res.output)
    assert info == load_prepared(tmp_path / "o").info() and info["vocab_size"] == 500
    res = runner.invoke(data_cmd, ["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_stdlib_docs_write_docs_and_encode_docs(tmp_path: Path):
    """The default corpus as jsonl and parquet documents reads back the same; encode_docs is the stream that
    prepare cuts into shards (before the last partial shard is dropped)."""
    from trainnet.data.prepare import encode_docs
    from trainnet.data.sources import SourceError, iter_docs, stdlib_docs, write_docs
    from trainnet.data.tokenizing import BytesTokenizer

    rows, skipped = stdlib_docs("json")
    assert [r["text"] for r in rows] == DOCS and skipped == [] and rows[0]["path"].startswith("json/")
    for name in ("d.jsonl", "d.parquet"):
        path = write_docs(tmp_path / name, rows)
        assert [d.text for d in iter_docs(path)] == DOCS
        assert [d.text for d in iter_docs(path, field="path")] == [r["path"] for r in rows]
    with pytest.raises(SourceError, match="jsonl or"):
        write_docs(tmp_path / "d.txt", rows)
    stream = encode_docs(tmp_path / "d.jsonl", BytesTokenizer())
    assert bytes(stream.astype("uint8")) == b"".join(t.encode() + b"\n\n" for t in DOCS)
    prepared = prepare(tmp_path / "d.parquet", tmp_path / "bpe", tokenizer="bpe:500", shard_tokens=1000, val_every=3)
    ids = encode_docs(tmp_path / "d.jsonl", prepared.tokenizer())
    shards = torch.cat([prepared.shard(i).tokens for i in range(len(prepared))])
    assert torch.equal(torch.from_numpy(ids[: shards.numel()]).to(shards.dtype), shards)
