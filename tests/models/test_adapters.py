"""State-dict adapters: our names <-> Hugging Face names, checked by loading into transformers' own classes."""

from __future__ import annotations

import pytest
import torch
from shapes import gpt, llama, qwen_tied

from trainnet.models import ModelConfigError, build_model, from_hf, hf_config, to_hf


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _hf_twin(mcfg, params):
    """A transformers model built from our hf_config(), loaded (strict) with to_hf(params)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(hf_config(mcfg))
    model_type = cfg.pop("model_type")
    twin = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg), dtype=torch.float32)
    twin.load_state_dict(to_hf(mcfg, params), strict=True)
    return twin.eval()


@pytest.mark.parametrize("bias", [False, True])
def test_gpt_bytes_to_gpt2_same_logits(bias: bool):
    mcfg = gpt(bias=bias)
    ours = build_model(mcfg, seed=0).eval()
    if bias:  # random biases, so a wrong bias mapping cannot hide behind zeros
        with torch.no_grad():
            for n, p in ours.named_parameters():
                if n.endswith("bias"):
                    p.normal_(0, 0.1)
    twin = _hf_twin(mcfg, _params(ours))
    assert type(twin).__name__ == "GPT2LMHeadModel"
    x = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(twin(input_ids=x).logits, ours(x)[0], rtol=1e-5, atol=1e-5)


def test_gpt_bytes_round_trip_and_zero_bias_rule():
    mcfg = gpt()
    params = _params(build_model(mcfg, seed=1))
    hf = to_hf(mcfg, params)
    assert hf["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D layout [in, out]
    assert hf["lm_head.weight"] is hf["transformer.wte.weight"]
    assert not any(hf[k].any() for k in hf if k.endswith(".bias"))  # no-bias layers export zero biases
    back = from_hf(mcfg, hf)
    assert list(back) == list(params) and all(torch.equal(back[k], params[k]) for k in params)
    hf["transformer.h.1.mlp.c_fc.bias"] = torch.full((128,), 0.5)
    with pytest.raises(ModelConfigError, match="c_fc.bias is not zero"):
        from_hf(mcfg, hf)


@pytest.mark.parametrize("make", [llama, qwen_tied], ids=["llama", "qwen2-tied"])
def test_hf_spec_round_trip_and_same_logits(make):
    mcfg = make()
    ours = build_model(mcfg, seed=0).eval()
    params = _params(ours)
    hf = to_hf(mcfg, params)
    assert not any(k.startswith("hf.") for k in hf)
    back = from_hf(mcfg, hf)
    assert list(back) == list(params) and all(torch.equal(back[k], params[k]) for k in params)
    twin = _hf_twin(mcfg, params)
    x = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(twin(input_ids=x).logits, ours(x)[0], rtol=1e-5, atol=1e-5)


def test_tied_weights_appear_under_both_names():
    mcfg = qwen_tied()
    hf = to_hf(mcfg, _params(build_model(mcfg, seed=0)))
    assert torch.equal(hf["lm_head.weight"], hf["model.embed_tokens.weight"])


def test_from_hf_missing_and_unknown_names():
    mcfg = llama()
    hf = to_hf(mcfg, _params(build_model(mcfg, seed=0)))
    with pytest.raises(ModelConfigError, match="missing 1 tensor"):
        from_hf(mcfg, {k: v for k, v in hf.items() if k != "model.norm.weight"})
    with pytest.raises(ModelConfigError, match="does not have"):
        from_hf(mcfg, hf | {"model.layers.9.mlp.up_proj.weight": torch.zeros(1)})
    # an old checkpoint's rotary buffer is recomputed from the config, so it is ignored
    from_hf(mcfg, hf | {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(8)})
