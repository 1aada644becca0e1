"""Held-out evaluation of published versions, off the request path (a thread of the coordinator; its
model forward passes run in the data-plane pool when there is one).

    ev = Evaluator(spec, state, blobs, interval_s=2.0)
    ev.step(now, latest=7, tokens=123_456, done=False)    # evaluates version 7 if due; True when it did

Every evaluation uses the run's one held-out set (RunSpec.heldout_loss: fixed windows of the val split), on
the model as published (rebuilt from the signed manifests), and stores (version, tokens, val_loss, time) in
the StateStore, where the dashboard, the report and the demo's summary read the same figure.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from trainnet.aggregate import keys
from trainnet.aggregate.publish import Reconstructor
from trainnet.server.runspec import RunSpec, build_model
from trainnet.store.blobs import BlobStore
from trainnet.store.state import StateStore

log = logging.getLogger("trainnet.evaluator")


class Evaluator:
    def __init__(self, spec: RunSpec, state: StateStore | None, blobs: BlobStore, interval_s: float = 2.0,
                 compute: Any = None) -> None:
        self.spec, self.state, self.blobs, self.interval_s = spec, state, blobs, interval_s
        self.compute = compute or self.loss  # a DataPlanePool's evaluate, when the runtime has one
        self.done = {int(p["version"]) for p in state.val_curve()} if state is not None else set()
        self._last = float("-inf")
        self._have: tuple[int, torch.Tensor] | None = None
        self._model: torch.nn.Module | None = None
        self.tracker: Any = None  # dashboard/trackers.py (TensorBoard, W&B), set by `serve --tracker`

    def params(self, version: int) -> dict[str, torch.Tensor]:
        r = Reconstructor(lambda v: json.loads(self.blobs.get(keys.manifest(v))), self.blobs.get,
                          self.spec.layout.numel)
        have = self._have if self._have is not None and self._have[0] <= version else None
        flat = r.get(version, have)
        self._have = (version, flat)
        return self.spec.layout.unflatten(flat)

    def loss(self, version: int) -> float:
        """The held-out loss of a published version (this process does the tensor work)."""
        if self._model is None:
            self._model = build_model(self.spec.cfg, seed=0)  # its init is overwritten by the evaluated weights
        return float(self.spec.heldout_loss(self.params(version), self._model))

    def step(self, now: float, latest: int, tokens: int, done: bool, published: bool = True) -> bool:
        if not published or latest in self.done:
            return False
        if not (latest == 0 or done or now - self._last >= self.interval_s):
            return False
        loss = self.compute(latest)
        logged = self.state.log_get("versions", f"v{latest:08d}")  # the tokens that made this version
        tokens = int(logged["tokens"]) if logged else tokens
        self.state.add_val_point(latest, tokens, float(loss), now)
        self.done.add(latest)
        self._last = now
        log.info("version %d: held-out loss %.4f (%d tokens)", latest, loss, tokens)
        if self.tracker is not None:
            self.tracker.log(latest, {"val_loss": float(loss), "tokens": float(tokens)})
        return True
