"""Bad dataset input: every error names the file and, where there is one, the line or row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainnet.data.prepare import prepare
from trainnet.data.sources import SourceError
from trainnet.data.tokenizing import TokenizerError

TEXT = "def f(x):\n    return x * 2\n" * 50


def _prep(src: Path, tmp_path: Path, **kw):
    return prepare(src, tmp_path / "out", shard_tokens=64, val_every=2, **kw)


def _jsonl(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("lines, match", [
    ([json.dumps({"text": TEXT}), "{not json", json.dumps({"text": "x"})], r"rows.jsonl line 2: malformed JSON"),
    ([json.dumps({"text": TEXT}), json.dumps({"body": "x"})], r"rows.jsonl line 2: no field 'text' \(fields: body\)"),
    ([json.dumps({"text": TEXT}), "", json.dumps({"text": 7})], r"rows.jsonl line 3: field 'text' is int, expected a string"),
    ([json.dumps({"text": None})], r"rows.jsonl line 1: field 'text' is null"),
    ([json.dumps(["a", "list"])], r"rows.jsonl line 1: expected a JSON object, got list"),
])
def test_jsonl_errors_name_file_and_line(tmp_path: Path, lines, match):
    with pytest.raises(SourceError, match=match):
        _prep(_jsonl(tmp_path, lines), tmp_path)


def test_jsonl_custom_field(tmp_path: Path):
    corpus = _prep(_jsonl(tmp_path, [json.dumps({"body": TEXT})]), tmp_path, field="body")
    assert corpus.ntokens > 0


def test_empty_dataset(tmp_path: Path):
    with pytest.raises(SourceError, match=r"empty dataset"):
        _prep(_jsonl(tmp_path, ["", "  "]), tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SourceError, match=r"empty.txt: no text to tokenize"):
        prepare(tmp_path / "empty.txt", tmp_path / "o2", shard_tokens=64, val_every=2)


def test_too_little_for_a_held_out_split(tmp_path: Path):
    (tmp_path / "t.txt").write_text("tiny text\n")
    with pytest.raises(SourceError, match="too few for a held-out split"):
        _prep(tmp_path / "t.txt", tmp_path)


def test_parquet_errors(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": [TEXT]}), tmp_path / "a.parquet")
    with pytest.raises(SourceError, match=r"a.parquet: no column 'text' \(columns: body\)"):
        _prep(tmp_path / "a.parquet", tmp_path)
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "b.parquet")
    with pytest.raises(SourceError, match=r"b.parquet: column 'text' has type int64, expected a string column"):
        _prep(tmp_path / "b.parquet", tmp_path)
    pq.write_table(pa.table({"text": [TEXT, None, "x"]}), tmp_path / "c.parquet")
    with pytest.raises(SourceError, match=r"c.parquet row 1: field 'text' is null"):
        _prep(tmp_path / "c.parquet", tmp_path)
    (tmp_path / "d.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SourceError, match=r"d.parquet: not a readable parquet file"):
        _prep(tmp_path / "d.parquet", tmp_path)


def test_datasets_folder_errors(tmp_path: Path):
    import datasets

    datasets.disable_progress_bars()
    dd = datasets.DatasetDict({"a": datasets.Dataset.from_dict({"text": [TEXT]}),
                               "b": datasets.Dataset.from_dict({"text": [TEXT]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(SourceError, match=r"dd: choose a split with --split \(splits: a, b\)"):
        _prep(tmp_path / "dd", tmp_path)
    assert _prep(tmp_path / "dd", tmp_path, split="b").ntokens > 0
    datasets.Dataset.from_dict({"n": [1, 2]}).save_to_disk(str(tmp_path / "nums"))
    with pytest.raises(SourceError, match=r"nums: no column 'text' \(columns: n\)"):
        prepare(tmp_path / "nums", tmp_path / "o3", shard_tokens=64, val_every=2)


def test_text_errors(tmp_path: Path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(TEXT.encode() * 200 + b"\xff\xfe oops")  # valid at the start, invalid past the probe
    with pytest.raises(SourceError, match=r"bad.txt: not valid UTF-8 at byte \d+"):
        _prep(bad, tmp_path, tokenizer="bpe:300")
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(SourceError, match=r"bin.dat"):
        prepare(tmp_path / "bin.dat", tmp_path / "o4")
    with pytest.raises(SourceError, match="does not exist"):
        prepare(tmp_path / "nope", tmp_path / "o5")


def test_bad_tokenizer_settings(tmp_path: Path):
    (tmp_path / "t.txt").write_text(TEXT)
    with pytest.raises(TokenizerError, match="bpe:VOCAB_SIZE"):
        _prep(tmp_path / "t.txt", tmp_path, tokenizer="bpe:lots")
    with pytest.raises(TokenizerError, match="too small"):
        _prep(tmp_path / "t.txt", tmp_path, tokenizer="bpe:100")
    with pytest.raises(TokenizerError, match="does not exist"):
        _prep(tmp_path / "t.txt", tmp_path, tokenizer=str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(TokenizerError, match=r"broken.json: not a readable tokenizer.json"):
        _prep(tmp_path / "t.txt", tmp_path, tokenizer=str(tmp_path / "broken.json"))


def test_out_folder_is_never_clobbered(tmp_path: Path):
    (tmp_path / "t.txt").write_text(TEXT)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.md").write_text("mine")
    with pytest.raises(SourceError, match="holds no prepared dataset"):
        prepare(tmp_path / "t.txt", keep, shard_tokens=64, val_every=2, overwrite=True)
    assert (keep / "notes.md").read_text() == "mine"


def test_a_bad_parquet_in_a_folder_fails_before_any_work(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(TEXT * 20)
    pq.write_table(pa.table({"body": ["x"]}), src / "z.parquet")
    with pytest.raises(SourceError, match=r"z.parquet: no column 'text'"):
        prepare(src, tmp_path / "out", tokenizer="bpe:300", shard_tokens=64, val_every=2)
    assert not (tmp_path / "out").exists()  # refused before training a tokenizer or writing a shard
