"""`trainnet export`: transformers loads the folder offline, with our logits and our tokenizer."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from shapes import gpt, llama

from trainnet.data.prepare import prepare
from trainnet.models import ModelConfig, build_model
from trainnet.models.checkpoint import CheckpointError, checkpoint_metadata
from trainnet.models.export import export_cmd, export_hf


def _checkpoint(mcfg: ModelConfig, path: Path, seed: int = 0) -> torch.nn.Module:
    model = build_model(mcfg, seed=seed).eval()
    save_file({k: v.detach().contiguous() for k, v in model.named_parameters()}, str(path),
              metadata=checkpoint_metadata(mcfg, version="3"))
    return model


def _logits_match(model: torch.nn.Module, out: Path, vocab: int) -> None:
    from transformers import AutoModelForCausalLM

    twin = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(twin(input_ids=x).logits.float(), model(x)[0], rtol=1e-5, atol=1e-5)


def test_gpt_bytes_exports_as_gpt2_with_a_byte_tokenizer(tmp_path: Path):
    from transformers import AutoTokenizer

    model = _checkpoint(gpt(bias=True), tmp_path / "ck.safetensors")
    res = CliRunner().invoke(export_cmd, [str(tmp_path / "ck.safetensors"), "--hf", str(tmp_path / "hf")])
    assert res.exit_code == 0, res.output
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    assert not list((tmp_path / "hf").glob("*.bin"))
    _logits_match(model, tmp_path / "hf", 256)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "def naïve(x):\n    return '→'\n"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text


def test_hf_model_exports_with_its_tokenizer(tmp_path: Path):
    from transformers import AutoTokenizer

    data = prepare(Path(sysconfig.get_paths()["stdlib"]) / "json", tmp_path / "data", tokenizer="bpe:400",
                   shard_tokens=1000, val_every=3)
    mcfg = llama(vocab=400)
    mcfg.tokenizer = str(tmp_path / "data")
    model = _checkpoint(mcfg, tmp_path / "ck.safetensors")
    export_hf(tmp_path / "ck.safetensors", tmp_path / "hf", tokenizer=tmp_path / "data")
    _logits_match(model, tmp_path / "hf", 400)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = data.tokenizer()
    assert tok("import json")["input_ids"] == ours.encode("import json")
    with pytest.raises(CheckpointError, match="needs --tokenizer"):
        export_hf(tmp_path / "ck.safetensors", tmp_path / "hf2")
    other = prepare(Path(sysconfig.get_paths()["stdlib"]) / "json", tmp_path / "other", tokenizer="bpe:401",
                    shard_tokens=1000, val_every=3)
    with pytest.raises(CheckpointError, match="differs from the one the model was trained with"):
        export_hf(tmp_path / "ck.safetensors", tmp_path / "hf3", tokenizer=other.root)


def test_sample_cli_works_on_an_hf_model_with_its_tokenizer(tmp_path: Path):
    """`trainnet sample` on both model kinds: an hf model samples tokens of its BPE (deterministic per seed),
    refuses to run without a tokenizer or with another one."""
    from click.testing import CliRunner

    from trainnet.model.sample import sample_cmd

    prepare(Path(sysconfig.get_paths()["stdlib"]) / "json", tmp_path / "data", tokenizer="bpe:400",
            shard_tokens=1000, val_every=3)
    mcfg = llama(vocab=400)
    mcfg.tokenizer = str(tmp_path / "data")
    _checkpoint(mcfg, tmp_path / "ck.safetensors")
    args = ["--checkpoint", str(tmp_path / "ck.safetensors"), "--prompt", "import ", "--tokens", "12"]
    r1 = CliRunner().invoke(sample_cmd, [*args, "--tokenizer", str(tmp_path / "data")])
    r2 = CliRunner().invoke(sample_cmd, [*args, "--tokenizer", str(tmp_path / "data")])
    assert r1.exit_code == 0, r1.output
    assert r1.output.startswith("import ") and len(r1.output) > len("import \n") and r1.output == r2.output
    r3 = CliRunner().invoke(sample_cmd, [*args, "--tokenizer", str(tmp_path / "data"), "--seed", "5"])
    assert r3.exit_code == 0 and r3.output != r1.output  # another seed, another sample (random weights: 400 ids)
    missing = CliRunner().invoke(sample_cmd, args)
    assert missing.exit_code != 0 and "needs --tokenizer" in missing.output
    prepare(Path(sysconfig.get_paths()["stdlib"]) / "json", tmp_path / "other", tokenizer="bpe:401",
            shard_tokens=1000, val_every=3)
    wrong = CliRunner().invoke(sample_cmd, [*args, "--tokenizer", str(tmp_path / "other")])
    assert wrong.exit_code != 0 and "differs from the one the model was trained with" in wrong.output
