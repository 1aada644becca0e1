"""Recompute an audited task from its public inputs: the built-in verifier's effect (run where tensor work
belongs: a data-plane process, or inline in the simulator).

    rc = Recomputer(spec, blobs, codec="q2", tolerance=(0.05, 0.99), device="cpu")
    passed, detail, steps = rc.recompute(audit_record)

Inputs, all public or committed to: the published model the task started from (rebuilt from the signed
version manifests; the last one is kept for the next audit), the shard by hash, the update exactly as
stored, and the residuals the worker revealed (checked against its commitments by Verifier.check).
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from safetensors.torch import load as st_load

from trainnet.aggregate import keys
from trainnet.aggregate.publish import Reconstructor
from trainnet.protocol.wire import WireLimits, decode_update
from trainnet.server.runspec import RunSpec, build_model
from trainnet.store.blobs import BlobStore
from trainnet.verify import Tolerance, Verifier

ParamDict = dict[str, torch.Tensor]


def split_residuals(tensors: ParamDict) -> tuple[ParamDict, ParamDict]:
    return ({k[5:]: v for k, v in tensors.items() if k.startswith("r_in/")},
            {k[6:]: v for k, v in tensors.items() if k.startswith("r_out/")})


def load_material(spec: RunSpec, blobs: BlobStore, a: Any) -> tuple[ParamDict, ParamDict, ParamDict]:
    """An audit's claimed update (decoded from the stored bytes) and its revealed residuals (r_in, r_out)."""
    data = blobs.get(a.blob)
    numel = max(1, spec.layout.numel)
    limits = WireLimits(max_total_bytes=len(data) + 1, max_total_elements=numel, max_elements_per_tensor=numel)
    claimed = decode_update(data, limits=limits).tensors
    r_in, r_out = ({}, {}) if a.residual_blob is None else split_residuals(st_load(blobs.get(a.residual_blob)))
    return claimed, r_in, r_out


class Recomputer:
    def __init__(self, spec: RunSpec, blobs: BlobStore, codec: str, tolerance: tuple[float, float],
                 device: str = "cpu") -> None:
        self.spec, self.blobs = spec, blobs
        self.verifier = Verifier(build_model(spec.cfg, seed=0), codec, Tolerance(*tolerance), device=device)
        self._base: tuple[int, torch.Tensor] | None = None

    def base_params(self, version: int) -> ParamDict:
        r = Reconstructor(lambda v: json.loads(self.blobs.get(keys.manifest(v))), self.blobs.get,
                          self.spec.layout.numel)
        have = self._base if self._base is not None and self._base[0] <= version else None
        flat = r.get(version, have)
        self._base = (version, flat)
        return self.spec.layout.unflatten(flat)

    def material(self, a: Any) -> tuple[ParamDict, ParamDict, ParamDict]:
        return load_material(self.spec, self.blobs, a)

    def recompute(self, a: Any) -> tuple[bool, dict[str, Any], int]:
        """(passed, detail, steps recomputed); raises Unverifiable when this device cannot judge the task."""
        v = self.verifier
        steps0 = v.steps_recomputed
        base = self.base_params(a.spec.base_version)
        shard = self.spec.corpus.shard(a.spec.shard_id, expect_sha256=a.spec.shard_sha256).tokens
        claimed, r_in, r_out = self.material(a)
        passed, detail = v.check(a.spec, base, shard, claimed, r_in, r_out, {"ef_in": a.ef_in, "ef_out": a.ef_out})
        detail = {k: (x if not isinstance(x, float) or math.isfinite(x) else str(x)) for k, x in detail.items()}
        return passed, detail, v.steps_recomputed - steps0
