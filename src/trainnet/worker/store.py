"""A worker's local state directory: its key, the last model it holds, cached shards, error feedback.

    st = WorkerStore(Path("~/.trainnet/worker").expanduser())
    st.save_model(params, version=7, run_id="r", model_cfg=cfg)     # model.safetensors (+ config metadata)
    version, params = st.load_model("r", template)                   # or None
    data = st.cached_shard(sha256) or fetch(); st.save_shard(sha256, data)

Layout: node_key.pem (auth), model.safetensors, shards/<sha256>.bin, feedback/<run_id>/...
Everything is written atomically (temp file + rename) so a SIGKILL never leaves a torn file, and
everything read back is validated (safetensors only, shapes and finiteness checked, shard hashes).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from trainnet.models.checkpoint import checkpoint_metadata
from trainnet.models.config import ModelConfig

ParamDict = dict[str, torch.Tensor]
MODEL_FILE = "model.safetensors"


class ModelFormatError(ValueError):
    """Received or stored parameters that do not fit the run's model."""


def atomic_write(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write via a temp file and a rename; `fsync=False` for caches whose content is checked when read."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def check_params(params: ParamDict, template: ParamDict, what: str) -> ParamDict:
    """Return params as float32 CPU tensors if they have exactly the template's names and shapes and
    are all finite; raise ModelFormatError otherwise."""
    if set(params) != set(template):
        missing, extra = sorted(set(template) - set(params)), sorted(set(params) - set(template))
        raise ModelFormatError(f"{what}: tensor names differ (missing {missing[:3]}, unexpected {extra[:3]})")
    out = {}
    for name, ref in template.items():
        t = params[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise ModelFormatError(f"{what}: {name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if not t.dtype.is_floating_point:
            raise ModelFormatError(f"{what}: {name} has dtype {t.dtype}")
        t = t.to(torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise ModelFormatError(f"{what}: {name} holds NaN or inf")
        out[name] = t
    return out


def model_bytes(params: ParamDict, version: int, run_id: str, model_cfg: ModelConfig, chain: int = 0) -> bytes:
    """A checkpoint `trainnet sample` and `trainnet export` can read: safetensors with the model config in the
    metadata.
    `chain` counts the fp16 model deltas applied since the last full download (drift bound)."""
    meta = checkpoint_metadata(model_cfg, trainnet_version=str(version), trainnet_run_id=run_id,
                               trainnet_delta_chain=str(chain))
    return st_save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in params.items()}, metadata=meta)


class WorkerStore:
    def __init__(self, root: Path, max_shards: int = 256) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "shards").mkdir(exist_ok=True)
        self.max_shards = max_shards

    # ------------------------------------------------------------------ model
    def save_model(self, params: ParamDict, version: int, run_id: str, model_cfg: ModelConfig, chain: int = 0) -> Path:
        path = self.root / MODEL_FILE
        atomic_write(path, model_bytes(params, version, run_id, model_cfg, chain))
        return path

    def load_model(self, run_id: str, template: ParamDict) -> tuple[int, ParamDict, int] | None:
        """(version, params, delta chain) of the stored model if it belongs to this run and fits the
        template, else None."""
        path = self.root / MODEL_FILE
        if not path.exists():
            return None
        try:
            data = path.read_bytes()
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("trainnet_run_id") != run_id:
                return None
            version, chain = int(meta["trainnet_version"]), int(meta.get("trainnet_delta_chain", "1000"))
            return version, check_params(st_load(data), template, str(path)), chain
        except (OSError, ValueError, KeyError, ModelFormatError):
            return None  # a stale or foreign file: download afresh

    # ------------------------------------------------------------------ shards
    def _shard_path(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"shard hash {sha256[:80]!r} is not 64 lowercase hex digits")
        return self.root / "shards" / f"{sha256}.bin"

    def cached_shard(self, sha256: str) -> bytes | None:
        path = self._shard_path(sha256)
        if not path.exists():
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            path.unlink(missing_ok=True)  # corrupted cache entry: fetch again
            return None
        os.utime(path)  # recently used, for the eviction below
        return data

    def save_shard(self, sha256: str, data: bytes) -> None:
        atomic_write(self._shard_path(sha256), data, fsync=False)  # a torn file fails its sha256: fetched again
        files = sorted((self.root / "shards").glob("*.bin"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.max_shards)]:
            old.unlink(missing_ok=True)

    # ------------------------------------------------------------------ error feedback
    def feedback_dir(self, run_id: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:80] or "run"
        return self.root / "feedback" / safe
