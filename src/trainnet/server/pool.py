"""The data plane's heavy work in its own process(es): merges, audit recomputation, held-out evaluation.

    pool = DataPlanePool(cfg, blob_url="state/blobs", processes=1)
    result = pool.merge(task_spec)                   # aggregate/merge.py, in the child
    passed, detail, steps = pool.recompute(audit)    # verify/verifier.py on the task's public inputs
    loss = pool.evaluate(version)                    # the run's held-out loss of a published version

The coordinator process is the control plane: it answers requests and decides, and never does tensor work on
the request path — not even in a thread, because one Python process shares one interpreter lock, and a
20-second audit recomputation in a thread starves the heartbeats of a whole swarm (seen: leases expiring
under a busy verifier). The children rebuild the run from its config and read the BlobStore themselves;
only small JSON-able specs and results cross the process boundary (a local pipe between this run's own
processes: nothing from the network is unpickled).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from trainnet.config import RunConfig

_STATE: dict[str, Any] = {}


def _exit_with_parent() -> None:
    """A child outlives a SIGKILLed coordinator otherwise: its task queue's pipe never reaches EOF (the child
    holds both ends), so it would wait on it forever, holding the model in memory. The parent's sentinel (a
    pipe only the parent holds open) becomes readable when the parent dies, however it died."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)


def _init(cfg: RunConfig, blob_url: str, threads: int) -> None:
    import torch

    from trainnet.server.runspec import RunSpec
    from trainnet.server.runtime import shard_env
    from trainnet.store.blobs import open_blob_store

    threading.Thread(target=_exit_with_parent, daemon=True, name="parent-watch").start()
    if threads:
        torch.set_num_threads(threads)
    spec = RunSpec.load(cfg)
    blobs = open_blob_store(blob_url)
    _STATE.update(spec=spec, blobs=blobs, env=shard_env(spec, blobs))


def _ready() -> bool:
    return "spec" in _STATE


def _merge(task_spec: dict[str, Any]) -> dict[str, Any]:
    from trainnet.aggregate.merge import run_merge_task

    return run_merge_task(task_spec, _STATE["env"])


def _recompute(audit_doc: dict[str, Any], codec: str, tolerance: tuple[float, float], device: str
               ) -> tuple[bool, dict[str, Any], int]:
    from trainnet.core.records import AuditRecord
    from trainnet.server.recompute import Recomputer

    rc = _STATE.get("recomputer")
    if rc is None:
        rc = _STATE["recomputer"] = Recomputer(_STATE["spec"], _STATE["blobs"], codec, tolerance, device)
    return rc.recompute(AuditRecord.from_doc(audit_doc))


def _evaluate(version: int) -> float:
    from trainnet.server.evaluator import Evaluator

    ev = _STATE.get("evaluator")
    if ev is None:
        ev = _STATE["evaluator"] = Evaluator(_STATE["spec"], None, _STATE["blobs"])
    return ev.loss(version)


class DataPlanePool:
    def __init__(self, cfg: RunConfig, blob_url: str, processes: int = 1, threads: int = 1) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked locks or threads
        self.pool = ProcessPoolExecutor(max(1, processes), mp_context=ctx, initializer=_init,
                                        initargs=(cfg, blob_url, threads))

        # Start the children now (importing torch and reading the corpus takes seconds), not at the first merge.
        self._warm = [self.pool.submit(_ready) for _ in range(max(1, processes))]

    def merge(self, task_spec: dict[str, Any]) -> dict[str, Any]:
        return self.pool.submit(_merge, task_spec).result()

    def recompute(self, audit_doc: dict[str, Any], codec: str, tolerance: tuple[float, float],
                  device: str) -> tuple[bool, dict[str, Any], int]:
        return self.pool.submit(_recompute, audit_doc, codec, tolerance, device).result()

    def evaluate(self, version: int) -> float:
        return self.pool.submit(_evaluate, version).result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
