"""Compatibility: the GPT moved to `trainnet.models.gpt` (the model spec registry's `gpt-bytes`)."""

from trainnet.models.gpt import GPT, MLP, Block, CausalSelfAttention, GPTConfig

__all__ = ["GPT", "MLP", "Block", "CausalSelfAttention", "GPTConfig"]
