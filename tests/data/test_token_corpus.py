"""Reading prepared data: the byte corpus's interface, hashes checked, tokens from network bytes."""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import pytest
import torch

from trainnet.config import load_config
from trainnet.data.corpus import CorpusError, load_run_corpus
from trainnet.data.prepare import prepare
from trainnet.data.token_corpus import PreparedDataError, TokenCorpus, load_prepared, tokens_from_bytes
from trainnet.models import ModelConfigError

STDLIB_JSON = Path(sysconfig.get_paths()["stdlib"]) / "json"


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    prepare(STDLIB_JSON, out, tokenizer="bpe:700", shard_tokens=1024, val_every=4)
    return out


def test_read_interface(bpe_dir: Path):
    corpus = load_prepared(bpe_dir)
    man = corpus.manifest
    assert man.ids("val") == [i for i in range(len(corpus)) if i % 4 == 3] and man.ids("train")
    shard = corpus.shard(1, expect_sha256=man.entry(1).sha256)
    assert hashlib.sha256(shard.data).hexdigest() == man.entry(1).sha256  # the bytes the coordinator serves
    assert shard.tokens.dtype == torch.int32 and shard.tokens.numel() == 1024
    info = corpus.info()
    assert json.loads(json.dumps(info)) == info and info["root_hash"] == man.root_hash
    assert torch.equal(tokens_from_bytes(shard.data, info["dtype"], info["vocab_size"]), shard.tokens)
    with pytest.raises(PreparedDataError, match="content hash"):
        corpus.shard(1, expect_sha256="0" * 64)
    with pytest.raises(KeyError, match="no shard 999"):
        corpus.shard(999)


def test_tokens_from_bytes_checks():
    data = (torch.tensor([1, 2, 65_535], dtype=torch.int32).numpy().astype("<u2")).tobytes()
    assert tokens_from_bytes(data, "uint16").tolist() == [1, 2, 65_535]
    assert tokens_from_bytes(b"ab", "uint8").dtype == torch.uint8
    with pytest.raises(PreparedDataError, match="not a whole number of uint16"):
        tokens_from_bytes(data[:-1], "uint16")
    with pytest.raises(PreparedDataError, match="outside the vocabulary"):
        tokens_from_bytes(data, "uint16", vocab_size=1000)
    with pytest.raises(PreparedDataError, match="unknown token dtype"):
        tokens_from_bytes(data, "int8")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampering_is_caught(bpe_dir: Path, tmp_path: Path):
    d = _copy(bpe_dir, tmp_path / "t1")
    f = d / "shards" / "000002.bin"
    f.write_bytes(bytes(reversed(f.read_bytes())))  # same size, other content
    corpus = load_prepared(d)
    with pytest.raises(PreparedDataError, match=r"000002.bin: sha256 .*\(file changed\)"):
        corpus.shard(2)
    d = _copy(bpe_dir, tmp_path / "t2")
    meta = json.loads((d / "manifest.json").read_text())
    meta["shards"][0]["split"] = "val"
    (d / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(PreparedDataError, match="the manifest was edited"):
        load_prepared(d)
    meta["shards"][0]["split"] = "train"
    meta["shards"][3]["ntokens"] = "many"
    (d / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(PreparedDataError, match=r"manifest.json shards\[3\]: field 'ntokens' has the wrong type"):
        load_prepared(d)
    d = _copy(bpe_dir, tmp_path / "t3")
    (d / "shards" / "000001.bin").unlink()
    with pytest.raises(PreparedDataError, match=r"000001.bin: shard file missing"):
        load_prepared(d)
    d = _copy(bpe_dir, tmp_path / "t4")
    (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text().replace('"<|endoftext|>"', '"<|eot|>"'))
    with pytest.raises(PreparedDataError, match="tokenizer.json sha256"):
        load_prepared(d).tokenizer()


def test_run_config_loads_prepared_data(bpe_dir: Path):
    sets = [f"data.path={json.dumps(str(bpe_dir))}", "model.spec=\"hf\"", "model.block_size=32",
            f"model.tokenizer={json.dumps(str(bpe_dir))}"]
    cfg = load_config(None, sets)
    cfg.model.hf = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "intermediate_size": 64}
    corpus = load_run_corpus(cfg)
    assert isinstance(corpus, TokenCorpus)
    assert cfg.model.to_dict()["vocab_size"] == 700  # from the tokenizer
    cfg.model.block_size = 2000
    cfg.model.hf["max_position_embeddings"] = 4096
    with pytest.raises(CorpusError, match="too small for the context length"):
        load_run_corpus(cfg)


def test_byte_model_on_bpe_data_is_refused(bpe_dir: Path):
    cfg = load_config(None, [f"data.path={json.dumps(str(bpe_dir))}", "model.block_size=32"])
    with pytest.raises(ModelConfigError, match="smaller than the data's vocabulary"):
        load_run_corpus(cfg)


def test_byte_corpus_info_matches_prepared_bytes(small_corpus):
    info = small_corpus.info()
    assert info["dtype"] == "uint8" and info["vocab_size"] == 256 and info["tokenizer"]["kind"] == "bytes"
    data = small_corpus.shard(0).data
    assert torch.equal(tokens_from_bytes(data, info["dtype"]), small_corpus.shard(0).tokens)
