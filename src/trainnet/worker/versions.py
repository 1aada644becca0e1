"""Published model versions as a worker (or verifier node) downloads them from its coordinator.

    fetch = VersionFetcher(client, template, signer=info["signer"])
    params = fetch.get(7, have=(5, params_v5))     # deltas 6 and 7, or the last full checkpoint if cheaper

Each version's manifest is checked against the coordinator's signing key, each blob against the sha256 the
manifest lists (aggregate/publish.py); URLs come from the coordinator (its own /v1/blob/ paths, or presigned
object-store / CDN URLs), so nothing is computed per download.
"""

from __future__ import annotations

from typing import Any

import torch

from trainnet.aggregate.layout import ParamLayout
from trainnet.aggregate.publish import ManifestError, Reconstructor, verify_manifest
from trainnet.worker.store import ModelFormatError, check_params

ParamDict = dict[str, torch.Tensor]


class VersionFetcher:
    def __init__(self, client: Any, template: ParamDict, signer: str | None) -> None:
        self.client, self.template, self.signer = client, template, signer
        self.layout = ParamLayout.of(template)
        self.urls: dict[str, str] = {}
        self.manifests: dict[int, dict[str, Any]] = {}

    def manifest(self, v: int) -> dict[str, Any]:
        if v not in self.manifests:
            reply = self.client.version(v)
            self.manifests[v] = verify_manifest(reply["manifest"], self.signer)
            self.urls.update(reply.get("urls") or {})
        return self.manifests[v]

    def latest(self) -> int:
        """The newest published version (its manifest, checked, is kept for the get() that follows)."""
        reply = self.client.version("latest")
        v = int(reply["latest"])
        if v not in self.manifests and isinstance(reply.get("manifest"), dict):
            manifest = verify_manifest(reply["manifest"], self.signer)
            if int(manifest.get("version", -1)) == v:
                self.manifests[v] = manifest
                self.urls.update(reply.get("urls") or {})
        return v

    def blob(self, key: str) -> bytes:
        return self.client.get_url(self.urls[key])

    def get(self, version: int, have: tuple[int, ParamDict] | None = None) -> ParamDict:
        r = Reconstructor(self.manifest, self.blob, self.layout.numel)
        start = (have[0], self.layout.flatten(have[1])) if have is not None and have[0] <= version else None
        try:
            flat = r.get(version, start)
        except ManifestError as exc:
            raise ModelFormatError(f"model version {version}: {exc}") from None
        while len(self.manifests) > 64:  # keep the recent manifests only
            self.manifests.pop(min(self.manifests))
        return check_params(self.layout.unflatten(flat), self.template, f"model {version}")
