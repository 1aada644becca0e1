"""Models: a small GPT, and the contract for bringing your own (see `gpt.py`)."""

from trainnet.model.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
