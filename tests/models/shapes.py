"""Small model configs for tests: a Llama shape, a Qwen2 shape with tied embeddings, the byte GPT."""

from __future__ import annotations

from trainnet.models import ModelConfig


def llama(layers: int = 2, hidden: int = 64, vocab: int = 300, block: int = 32, **extra: object) -> ModelConfig:
    return ModelConfig(spec="hf", block_size=block, hf={
        "model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 2 * hidden, "vocab_size": vocab,
        "max_position_embeddings": 128, **extra})


def qwen_tied(vocab: int = 300) -> ModelConfig:
    return ModelConfig(spec="hf", block_size=32, hf={
        "model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": vocab, "tie_word_embeddings": True})


def gpt(bias: bool = False, **kw: object) -> ModelConfig:
    return ModelConfig(**({"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "bias": bias} | kw))
