"""Byte-level tokenizer: token id = byte value (vocab 256). Lossless for any input."""

from __future__ import annotations

import torch


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str | bytes) -> torch.Tensor:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return bytes(int(v) & 0xFF for v in values).decode("utf-8", errors="replace")
