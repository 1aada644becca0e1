"""Published model versions: the signed manifest of each version and how anyone rebuilds the model from it.

    doc = build_manifest(run_id, "merge", version, numel, shard_results, created=now)
    doc = sign_manifest(doc, coordinator_key); verify_manifest(doc, coordinator_public_hex)
    flat = Reconstructor(fetch_manifest, fetch_blob, numel).get(version, have=(v_old, flat_old))

A version's manifest lists, per aggregator shard, the published delta of its range (wire format, codec
`publish_codec`) and, every `full_every` versions, full-checkpoint chunks (bf16; the first and the final
version exact fp32), each by key, sha256 and size. The reconstruction θ̃_v is defined by the chain:
θ̃_0 = the exact initial weights; θ̃_v = θ̃_{v-1} + decode(delta_v), rounded to bf16 at anchor versions (those
with a bf16 full checkpoint), so a worker that follows the deltas and one that joins from a checkpoint hold
bit-identical weights, and the verifier replays a task from exactly the model the worker trained from. The
delta is the quantized difference between the new exact parameters and the previous reconstruction, so
rounding errors never accumulate (coordinator-side error feedback). Nothing is computed per download.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trainnet.protocol.auth import load_public_key, public_key_hex
from trainnet.protocol.wire import WireLimits, decode_update

MANIFEST_FORMAT = 1


class ManifestError(ValueError):
    """A manifest or a blob it lists is malformed, unsigned or does not match its hash."""


def build_manifest(run_id: str, kind: str, version: int, numel: int, shards: list[dict[str, Any]],
                   created: float, exact: bool = False) -> dict[str, Any]:
    shards = sorted(shards, key=lambda r: r["lo"])
    deltas = [r.get("delta") for r in shards]
    fulls = [r.get("full") for r in shards]
    full = None
    if all(f is not None for f in fulls) and fulls:
        chunks = sorted((c for f in fulls for c in f), key=lambda c: c["lo"])
        full = {"dtype": chunks[0]["dtype"] if chunks else "float32", "chunks": chunks}
    delta = None
    if all(d is not None for d in deltas) and deltas:
        delta = {"codec": deltas[0]["codec"],
                 "shards": [{k: d[k] for k in ("lo", "hi", "key", "sha256", "nbytes")} for d in deltas]}
    return {"format": MANIFEST_FORMAT, "run_id": run_id, "version": int(version), "kind": kind,
            "numel": int(numel), "created": float(created), "exact": bool(exact), "delta": delta, "full": full,
            "anchor": full is not None and not exact and delta is not None}


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k not in ("signature", "signer")}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False).encode()


def sign_manifest(doc: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    return doc | {"signer": public_key_hex(key), "signature": key.sign(_canonical(doc)).hex()}


def verify_manifest(doc: Any, signer_hex: str | None) -> dict[str, Any]:
    """Check shape and (when a signer key is given) the signature; returns the document."""
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise ManifestError("not a TrainNet version manifest (format 1)")
    for k, t in (("version", int), ("numel", int), ("run_id", str)):
        if not isinstance(doc.get(k), t):
            raise ManifestError(f"manifest field {k!r} must be {t.__name__}")
    if signer_hex is not None:
        pub = load_public_key(signer_hex)
        sig = doc.get("signature")
        if pub is None or not isinstance(sig, str) or doc.get("signer") != signer_hex:
            raise ManifestError("manifest is not signed by this run's coordinator key")
        try:
            pub.verify(bytes.fromhex(sig), _canonical(doc))
        except (InvalidSignature, ValueError):
            raise ManifestError("manifest signature does not verify") from None
    return doc


def bytes_to_flat(raw: bytes, dtype: str) -> torch.Tensor:
    if dtype == "float32":
        return torch.frombuffer(bytearray(raw), dtype=torch.float32).clone()
    if dtype == "bfloat16":
        return torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).to(torch.float32)
    raise ManifestError(f"unknown checkpoint dtype {dtype!r}")


class Reconstructor:
    """Rebuild θ̃_v from manifests and blobs fetched by the given functions (HTTP for a worker, the blob store
    for the verifier and the evaluator). Blobs are checked against the manifest's sha256 before use."""

    def __init__(self, manifest: Callable[[int], dict[str, Any]], blob: Callable[[str], bytes], numel: int,
                 limits: WireLimits | None = None) -> None:
        self.manifest, self.blob, self.numel = manifest, blob, numel
        self.limits = limits or WireLimits(max_total_bytes=1 << 40, max_total_elements=1 << 40,
                                           max_elements_per_tensor=1 << 40, max_tensors=1 << 20)
        self.bytes_down = 0

    def _fetch(self, entry: dict[str, Any]) -> bytes:
        data = self.blob(entry["key"])
        self.bytes_down += len(data)
        if len(data) != entry["nbytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ManifestError(f"blob {entry['key']} does not match the manifest (size or sha256)")
        return data

    def full(self, m: dict[str, Any]) -> torch.Tensor:
        flat = torch.empty(self.numel, dtype=torch.float32)
        covered = 0
        for c in m["full"]["chunks"]:
            x = bytes_to_flat(self._fetch(c), c["dtype"])
            if x.numel() != c["hi"] - c["lo"]:
                raise ManifestError(f"chunk {c['key']} holds {x.numel()} values for [{c['lo']}, {c['hi']})")
            flat[c["lo"]:c["hi"]] = x
            covered += x.numel()
        if covered != self.numel:
            raise ManifestError(f"full checkpoint of version {m['version']} covers {covered} of {self.numel}")
        return flat

    def apply_delta(self, flat: torch.Tensor, m: dict[str, Any]) -> torch.Tensor:
        for s in m["delta"]["shards"]:
            upd = decode_update(self._fetch(s), limits=self.limits)
            for name, t in upd.tensors.items():
                a = int(name)
                if not (s["lo"] <= a and a + t.numel() <= s["hi"]):
                    raise ManifestError(f"delta piece {name} lies outside its shard [{s['lo']}, {s['hi']})")
                flat[a:a + t.numel()] = flat[a:a + t.numel()] + t.reshape(-1)
        if m.get("anchor"):
            flat = flat.to(torch.bfloat16).to(torch.float32)
        return flat

    def plan(self, target: int, have: int | None) -> tuple[int | None, list[int]]:
        """(version to load a full checkpoint of, or None to start from `have`; deltas to apply in order)."""
        chain: list[int] = []
        v = target
        while True:
            m = self.manifest(v)
            if have is not None and v == have:
                return None, list(reversed(chain))
            if m["full"] is not None and (have is None or have > v or m["delta"] is None
                                          or self._cheaper_full(m, target - have)):
                return v, list(reversed(chain))
            if m["delta"] is None or v == 0:
                raise ManifestError(f"version {v} has neither a usable delta nor a full checkpoint")
            chain.append(v)
            v -= 1

    def _cheaper_full(self, m: dict[str, Any], deltas_needed: int) -> bool:
        full_bytes = sum(c["nbytes"] for c in m["full"]["chunks"])
        delta_bytes = sum(s["nbytes"] for s in m["delta"]["shards"]) if m["delta"] else full_bytes
        return deltas_needed * delta_bytes > full_bytes

    def get(self, target: int, have: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        start, deltas = self.plan(target, None if have is None else have[0])
        flat = self.full(self.manifest(start)) if start is not None else have[1].clone()
        for v in deltas:
            flat = self.apply_delta(flat, self.manifest(v))
        return flat
