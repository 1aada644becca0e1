"""Models: the spec registry (gpt-bytes, any transformers causal LM) and the one-liners every call site uses.

    from trainnet.models import ModelConfig, build_model, model_identity
    model = build_model(cfg.model, seed=0)                # forward(x, y) -> (logits, loss)
    mcfg = ModelConfig.from_dict(info["model"])           # the wire form from /v1/info
    ident = model_identity(cfg.model)                     # JSON-able, part of the run identity

Importing this package does not import transformers; the "hf" spec imports it when first used.
"""

from trainnet.models.config import ModelConfig, ModelConfigError
from trainnet.models.registry import (
    ModelSpec,
    build_model,
    check_corpus,
    count_params,
    from_hf,
    get_spec,
    hf_config,
    model_identity,
    param_groups,
    register_spec,
    set_checkpointing,
    spec_names,
    spec_of,
    to_hf,
)
from trainnet.models.units import loss_units

__all__ = [
    "ModelConfig", "ModelConfigError", "ModelSpec", "build_model", "check_corpus", "count_params",
    "from_hf", "get_spec", "hf_config", "loss_units", "model_identity", "param_groups",
    "register_spec", "set_checkpointing", "spec_of", "spec_names", "to_hf",
]
