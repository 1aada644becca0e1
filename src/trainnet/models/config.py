"""The `[model]` section of a run: which model spec, and its shape.

    mcfg = ModelConfig()                                      # gpt-bytes, today's byte-level GPT
    mcfg = ModelConfig(spec="hf", hf={"model_type": "llama", "hidden_size": 128, ...}, tokenizer="data/")
    wire = mcfg.to_dict(); same = ModelConfig.from_dict(wire)  # self-contained JSON for /v1/info

In a run TOML:

    [model]                       # gpt-bytes (default): the GPT fields below are its shape
    n_layer = 2
    n_head = 4
    n_embd = 128
    block_size = 64               # the context length, for every spec

    [model]                       # any transformers causal LM, built from a config (no download)
    spec = "hf"
    block_size = 256
    config = "path/config.json"   # optional: a Hugging Face config.json ...
    init = "path/checkpoint/"     # optional: ... or a local checkpoint folder (safetensors only)
    tokenizer = "data/prepared/"  # optional: tokenizer.json (or a folder holding one)
    [model.hf]                    # inline fields, applied over `config`
    model_type = "llama"
    hidden_size = 128
    num_hidden_layers = 4

With spec = "hf" the GPT fields n_layer, n_head, n_embd, dropout and bias are not used; vocab_size is
used only when neither `[model.hf]`, `config` nor the tokenizer gives one. `to_dict()` is the wire form:
it reads `config` and the tokenizer from disk, merges them into `hf`, and drops the paths (a worker
cannot open the coordinator's files), so call it where those files are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ModelConfigError(ValueError):
    """A model config that cannot be used; the message names the field (model.xxx) or file."""


@dataclass
class ModelConfig:
    spec: str = "gpt-bytes"
    # gpt-bytes shape (nanoGPT field names, so existing run TOMLs keep working)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64  # context length (tokens), for every spec
    vocab_size: int = 256  # byte-level tokenizer
    dropout: float = 0.0
    bias: bool = False
    # any spec
    config: str | None = None  # path to a Hugging Face config.json (spec "hf")
    hf: dict[str, Any] = field(default_factory=dict)  # inline Hugging Face config fields (spec "hf")
    init: str | None = None  # local checkpoint (folder or .safetensors) to initialise from
    tokenizer: str | None = None  # tokenizer.json or a folder with one; None: the spec's default

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model") -> ModelConfig:
        """Build from a JSON object (the wire form, a checkpoint's metadata, or today's GPTConfig fields).
        Unknown fields and wrong types raise ModelConfigError naming `where.field`."""
        if not isinstance(data, dict):
            raise ModelConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelConfigError(f"{where}: unknown fields {unknown} (known: {', '.join(sorted(names))})")
        cfg = cls(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()})
        cfg.check(where)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The self-contained, JSON-able wire form (see the module docstring): `from_dict` of it builds
        a model with the same parameter names and shapes on any machine."""
        from trainnet.models.registry import get_spec

        self.check()
        return dataclasses.asdict(get_spec(self.spec).resolve(self))

    def check(self, where: str = "model") -> None:
        """Type and range checks (the TOML loader sets fields without them)."""
        ints = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ModelConfigError(f"{where}.{name}: expected a positive integer, got {v!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ModelConfigError(f"{where}.dropout: expected a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.bias, bool):
            raise ModelConfigError(f"{where}.bias: expected true/false, got {self.bias!r}")
        if not isinstance(self.spec, str):
            raise ModelConfigError(f"{where}.spec: expected a string, got {self.spec!r}")
        for name in ("config", "init", "tokenizer"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise ModelConfigError(f"{where}.{name}: expected a path string, got {v!r}")
        if not isinstance(self.hf, dict) or not all(isinstance(k, str) for k in self.hf):
            raise ModelConfigError(f"{where}.hf: expected a table of Hugging Face config fields, got {self.hf!r}")
        from trainnet.models.registry import get_spec

        try:
            get_spec(self.spec)
        except KeyError as exc:
            raise ModelConfigError(f"{where}.spec: {exc.args[0]}") from None
