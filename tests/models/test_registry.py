"""The model spec registry: configs from TOML and the wire, builds, identities, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from shapes import gpt, llama, qwen_tied

from trainnet.config import ConfigError, load_config
from trainnet.models import (
    ModelConfig,
    ModelConfigError,
    build_model,
    check_corpus,
    count_params,
    model_identity,
    spec_names,
    to_hf,
)
from trainnet.models.gpt import GPT, GPTConfig


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return list(pa) == list(pb) and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_builtin_specs():
    assert {"gpt-bytes", "hf"} <= set(spec_names())


def test_gpt_bytes_is_todays_gpt_bit_for_bit():
    cfg = load_config("bench/standard.toml").model
    assert cfg.spec == "gpt-bytes"
    torch.manual_seed(3)
    old = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=64))
    torch.manual_seed(3)
    assert _same(old, build_model(cfg))  # seed=None: the global RNG, as GPT(cfg) used
    assert _same(old, build_model(cfg, seed=3))
    x = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(old(x, x)[1], build_model(cfg, seed=3)(x, x)[1], rtol=0, atol=0)


def test_hf_from_toml_inline_table(tmp_path: Path):
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nspec = "hf"\nblock_size = 32\n[model.hf]\nmodel_type = "llama"\nhidden_size = 64\n'
                    'num_hidden_layers = 2\nnum_attention_heads = 4\nnum_key_value_heads = 2\n'
                    'intermediate_size = 128\nvocab_size = 300\n')
    cfg = load_config(toml).model
    model = build_model(cfg, seed=0)
    names = [n for n, _ in model.named_parameters()]
    assert names[0] == "hf.model.embed_tokens.weight" and "hf.lm_head.weight" in names
    x = torch.randint(0, 300, (2, 32))
    logits, loss = model(x, x)
    assert logits.shape == (2, 32, 300) and loss.dim() == 0
    assert abs(float(loss.detach()) - torch.log(torch.tensor(300.0)).item()) < 0.5  # near-uniform at init


def test_same_seed_same_params_other_seed_differs():
    a, b, c = build_model(llama(), seed=1), build_model(llama(), seed=1), build_model(llama(), seed=2)
    assert _same(a, b) and not _same(a, c)


def test_wire_round_trip_builds_the_same_model(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 500, "transformers_version": "4.0",
        "architectures": ["LlamaForCausalLM"]}))
    cfg = ModelConfig(spec="hf", block_size=32, config=str(tmp_path / "config.json"), hf={"num_hidden_layers": 2})
    wire = cfg.to_dict()
    assert wire["config"] is None and wire["init"] is None and wire["tokenizer"] is None  # no paths on the wire
    assert wire["hf"]["num_hidden_layers"] == 2 and wire["vocab_size"] == 500  # inline fields win over the file
    assert "transformers_version" not in wire["hf"]
    back = ModelConfig.from_dict(json.loads(json.dumps(wire)))
    assert back.to_dict() == wire
    assert _same(build_model(cfg, seed=0), build_model(back, seed=0))


def test_gpt_wire_and_old_checkpoint_fields():
    old_fields = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 256, "dropout": 0.0,
                  "bias": False}
    cfg = ModelConfig.from_dict(old_fields)  # a GPTConfig-only dict (older checkpoints, older /v1/info)
    assert cfg.spec == "gpt-bytes" and cfg.to_dict() == ModelConfig(**old_fields).to_dict()


@pytest.mark.parametrize("data, match", [
    ({"n_layer": 2, "wat": 1}, r"model: unknown fields \['wat'\]"),
    ({"n_layer": "two"}, "model.n_layer: expected a positive integer"),
    ({"spec": "nope"}, "model.spec: unknown model spec 'nope'"),
    ({"hf": [1]}, "model.hf: expected a table"),
    ({"dropout": 1.5}, "model.dropout"),
])
def test_bad_fields_name_the_field(data, match):
    with pytest.raises(ModelConfigError, match=match):
        ModelConfig.from_dict(data)


def test_hf_config_errors_are_clear(tmp_path: Path):
    with pytest.raises(ModelConfigError, match="model_type is required"):
        build_model(ModelConfig(spec="hf", hf={"hidden_size": 64}))
    with pytest.raises(ModelConfigError, match="exceeds the hf config's max_position_embeddings"):
        build_model(llama(block=256))
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{nope")
        build_model(ModelConfig(spec="hf", config=str(tmp_path / "bad.json")))
    with pytest.raises(ModelConfigError, match="for spec = \"hf\""):
        build_model(ModelConfig(hf={"model_type": "llama"}))
    with pytest.raises(ModelConfigError, match="divisible"):
        build_model(ModelConfig(n_embd=30, n_head=4))


def test_toml_type_errors_still_come_from_the_loader(tmp_path: Path):
    toml = tmp_path / "run.toml"
    toml.write_text("[model]\nn_layer = \"x\"\n")
    with pytest.raises(ConfigError, match="model.n_layer"):
        load_config(toml)


def test_identity_is_json_and_tracks_the_model():
    ident = model_identity(llama())
    assert json.loads(json.dumps(ident)) == ident
    assert ident["spec"] == "hf" and ident["n_params"] == sum(p.numel() for p in build_model(llama()).parameters())
    assert model_identity(llama()) == ident  # stable
    assert model_identity(llama(hidden=32))["config"] != ident["config"]
    g = model_identity(gpt())
    assert g["tokenizer"]["kind"] == "bytes" and len(g["tokenizer"]["sha256"]) == 64


def test_count_params_matches_a_real_build_with_tied_weights():
    model = build_model(qwen_tied(), seed=0)
    assert count_params(qwen_tied()) == sum(p.numel() for p in model.parameters())
    names = [n for n, _ in model.named_parameters()]
    assert "hf.lm_head.weight" not in names  # tied: named once, exchanged once


def test_init_from_local_checkpoint_folder(tmp_path: Path):
    src = build_model(llama(), seed=5)
    params = {k: v.detach() for k, v in src.named_parameters()}
    save_file({k: v.contiguous() for k, v in to_hf(llama(), params).items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(llama().hf))
    cfg = ModelConfig(spec="hf", block_size=32, init=str(tmp_path))  # config comes from init/config.json
    assert _same(build_model(cfg, seed=0), src)
    assert model_identity(cfg)["init_sha256"] is not None


def test_init_refuses_pickles_and_names_the_folder(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps(llama().hf))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ModelConfigError, match="pickle-based weights are refused"):
        build_model(ModelConfig(spec="hf", block_size=32, init=str(tmp_path)))


def test_init_with_the_wrong_architecture_is_refused(tmp_path: Path):
    params = {k: v.detach() for k, v in build_model(llama(layers=3), seed=0).named_parameters()}
    save_file({k: v.contiguous() for k, v in to_hf(llama(layers=3), params).items()}, str(tmp_path / "m.safetensors"))
    with pytest.raises(ModelConfigError, match="does not have"):
        build_model(ModelConfig(**{**llama().__dict__, "init": str(tmp_path / "m.safetensors")}))


def test_check_corpus():
    info = {"vocab_size": 4096, "tokenizer": {"kind": "hf", "sha256": "a" * 64}}
    with pytest.raises(ModelConfigError, match="smaller than the data's vocabulary"):
        check_corpus(gpt(), info)
    with pytest.raises(ModelConfigError, match="differs from the data's"):
        check_corpus(gpt(vocab_size=4096), info)  # declares the byte tokenizer by default
    check_corpus(llama(vocab=4096), info)  # an hf model without a declared tokenizer: vocab only


@pytest.mark.parametrize("fields", [dict(n_layer=1, n_head=2, n_embd=32, block_size=16),
                                    dict(n_layer=3, n_head=4, n_embd=64, block_size=48, bias=True),
                                    dict(n_layer=2, n_head=2, n_embd=48, block_size=8, vocab_size=300)])
def test_gpt_bytes_count_from_config_matches_a_real_build(fields):
    mcfg = ModelConfig(**fields)
    assert count_params(mcfg) == sum(p.numel() for p in build_model(mcfg, seed=0).parameters())
