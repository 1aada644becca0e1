"""Residuals a worker may have to reveal for an audit, kept on disk so a restart can still reveal them.

    keep = RevealStore(state_dir / "reveal")
    keep.put(task_id, r_in, r_out)     # before the upload: the pair its header commits to (ef_in / ef_out)
    body = keep.body(task_id)          # POST /v1/audit/{task_id}/residuals body, or None
    keep.forget(task_id)               # revealed, or not audited

An honest worker that restarts between an audited upload and its reveal would otherwise fail the audit
("no_reveal") and be banned. Only the `limit` newest pairs are kept (the coordinator asks for a reveal
in the upload reply or the next lease replies, so old ones are never needed).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch
from safetensors.torch import save as st_save

_TASK_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def reveal_body(r_in: dict[str, torch.Tensor], r_out: dict[str, torch.Tensor]) -> bytes:
    """Safetensors of r_in/<name> and r_out/<name>, float32 on CPU."""
    tensors = {f"r_in/{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in r_in.items()}
    tensors |= {f"r_out/{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in r_out.items()}
    return st_save(tensors)


class RevealStore:
    def __init__(self, root: Path, limit: int = 4) -> None:
        self.root, self.limit = Path(root), limit

    def _find(self, task_id: str) -> Path | None:
        if not _TASK_ID.fullmatch(task_id) or not self.root.is_dir():
            return None
        return next(iter(sorted(self.root.glob(f"*-{task_id}.safetensors"))), None)

    def put(self, task_id: str, r_in: dict[str, torch.Tensor], r_out: dict[str, torch.Tensor]) -> None:
        if not _TASK_ID.fullmatch(task_id):
            return
        self.forget(task_id)
        self.root.mkdir(parents=True, exist_ok=True)
        # The name starts with the write time, so name order is age order (no reliance on mtime).
        path = self.root / f"{time.time_ns():020d}-{task_id}.safetensors"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(reveal_body(r_in, r_out))
        os.replace(tmp, path)  # atomic: a crash leaves the old file or the new one, never half of one
        for old in sorted(self.root.glob("*.safetensors"))[:-self.limit]:
            old.unlink(missing_ok=True)

    def body(self, task_id: str) -> bytes | None:
        path = self._find(task_id)
        return path.read_bytes() if path is not None else None

    def forget(self, task_id: str) -> None:
        path = self._find(task_id)
        if path is not None:
            path.unlink(missing_ok=True)
