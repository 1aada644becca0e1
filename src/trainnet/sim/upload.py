"""What a simulated worker uploads: the update encoded exactly as a real worker would send it.

Bytes are counted from the encoded buffer itself, never computed from a formula.
"""

from __future__ import annotations

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from trainnet.protocol.messages import TaskSpec


def encode_upload(delta: dict[str, torch.Tensor], codec: str, spec: TaskSpec) -> bytes:
    if codec != "fp32":
        raise ValueError(f"codec {codec!r} is not available yet; only fp32")
    return st_save({k: v.contiguous().float() for k, v in delta.items()},
                   metadata={"task_id": spec.task_id, "base_version": str(spec.base_version)})


def decode_upload(data: bytes) -> dict[str, torch.Tensor]:
    return st_load(data)
