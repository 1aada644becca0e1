"""Reading local weights safely: safetensors only (never a pickle), strict names and shapes.

    tensors = read_safetensors(Path("ckpt/"), "model.init")   # a .safetensors file or a folder of them
    copy_into(model, tensors, "model.init ckpt/")              # every parameter, same shapes, cast to its dtype
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from trainnet.models.config import ModelConfigError

_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_safetensors(path: Path, where: str) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, or of every *.safetensors file in a folder (sharded checkpoints);
    a name present in two files raises. Pickle-based weights are refused with the reason."""
    from safetensors.torch import load_file

    path = path.expanduser()
    if not path.exists():
        raise ModelConfigError(f"{where}: {path} does not exist")
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLES)
        extra = f" (found {', '.join(pickled)}: pickle-based weights are refused, convert them to safetensors)" \
            if pickled else ""
        raise ModelConfigError(f"{where}: no *.safetensors file in {path}{extra}")
    if not path.is_dir() and path.suffix in _PICKLES:
        raise ModelConfigError(f"{where}: {path} is a pickle-based checkpoint; only safetensors are read")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(str(f))
        except Exception as exc:  # safetensors raises its own error types for malformed files
            raise ModelConfigError(f"{where}: {f} is not a readable safetensors file ({exc})") from None
        clash = sorted(set(part) & set(out))
        if clash:
            raise ModelConfigError(f"{where}: tensor {clash[0]} appears in more than one file ({f.name})")
        out.update(part)
    return out


def copy_into(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy tensors into the model's parameters by name; a missing name or a shape mismatch raises."""
    own = dict(model.named_parameters())
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise ModelConfigError(f"{where}: missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    with torch.no_grad():
        for name, p in own.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(p.shape):
                raise ModelConfigError(f"{where}: {name} has shape {tuple(t.shape)}, the model needs {tuple(p.shape)}")
            p.copy_(t.to(p.dtype))
