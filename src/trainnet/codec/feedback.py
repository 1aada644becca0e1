"""Worker-side error feedback: what compression drops this round is added back next round.

    ef = ErrorFeedback("topk:0.015+q2")
    encoded, sent = ef.compress(delta)      # encoded: dict[name, EncodedTensor]; sent: what the server sees
    ef.save(state_dir); ef2 = ErrorFeedback.load(state_dir, "topk:0.015+q2")

residual_new = (delta + residual_old) - decode(encode(delta + residual_old)), so over any number of rounds
sum(sent) + residual == sum(delta) (up to float32 rounding).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainnet.codec.base import Codec, EncodedTensor
from trainnet.codec.bits import all_finite
from trainnet.codec.spec import parse_codec

ParamDict = dict[str, torch.Tensor]
STATE_FILE = "error_feedback.safetensors"


class ErrorFeedback:
    """Keeps one float32 residual per tensor name and compresses delta + residual."""

    def __init__(self, codec: str | Codec) -> None:
        self.codec = parse_codec(codec) if isinstance(codec, str) else codec
        self.residuals: ParamDict = {}

    def compress(self, delta: ParamDict) -> tuple[dict[str, EncodedTensor], ParamDict]:
        """Encode delta + residual per tensor; returns (encoded, decoded approximation actually sent)."""
        for name, d in delta.items():
            r = self.residuals.get(name)
            if r is not None and r.shape != d.shape:
                raise ValueError(f"error feedback: tensor {name!r} has shape {tuple(d.shape)}, "
                                 f"residual has {tuple(r.shape)}")
        encoded: dict[str, EncodedTensor] = {}
        sent: ParamDict = {}
        new_res: ParamDict = {}
        for name, d in delta.items():
            acc = d.detach().to(torch.float32)
            r = self.residuals.get(name)
            if r is not None:
                acc = acc + r.to(acc.device)
            enc = self.codec.encode(acc)
            approx = self.codec.decode(enc, validate=False)
            encoded[name], sent[name], new_res[name] = enc, approx, acc - approx
        # Commit only after every tensor encoded, so a failure leaves the old state intact.
        self.residuals.update(new_res)
        return encoded, sent

    def residual_norm(self) -> float:
        """L2 norm of all residuals together (for logging)."""
        return float(sum(float(r.double().pow(2).sum()) for r in self.residuals.values()) ** 0.5)

    def reset(self) -> None:
        """Forget all residuals (e.g. when the model is re-initialised)."""
        self.residuals.clear()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write residuals to directory/error_feedback.safetensors atomically; returns the path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path, tmp = d / STATE_FILE, d / (STATE_FILE + ".tmp")
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.residuals.items()}
        save_file(tensors, str(tmp), metadata={"codec": self.codec.spec})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike, codec: str | Codec) -> ErrorFeedback:
        """Restore from `save`'s file (safetensors, no pickle); a missing file gives empty residuals."""
        ef = cls(codec)
        path = Path(directory) / STATE_FILE
        if path.exists():
            for k, v in load_file(str(path)).items():
                if v.dtype != torch.float32 or not all_finite(v):
                    raise ValueError(f"error feedback state {path}: bad residual {k!r}")
                ef.residuals[k] = v
        return ef
