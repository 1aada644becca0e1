"""Helpers for the worker tests: tiny runs served by a real coordinator subprocess on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trainnet.worker.procs import LocalCluster, write_toml


def tiny_run(tmp: Path, tokens: int, **consensus: Any) -> Path:
    """A run.toml with the tiniest model and data (1 layer, 32 wide, 2 MB of stdlib, 64 kB shards)."""
    cons = {"h": 5, "quorum": 2, "grace_s": 2.0, "lease_s": 30.0, "max_staleness": 8}
    cons.update(consensus)
    return write_toml(tmp / "run.toml", {
        "name": "wtest",
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
        "data": {"shard_bytes": 65536, "val_every": 10, "max_bytes": 2_000_000},
        "inner": {"batch_size": 8, "lr": 3e-3},
        "consensus": cons,
        "sim": {"tokens": tokens, "seed": 0, "codec": "topk:0.1+q4"},
    })


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll pred() until it returns something truthy; fail the test after `timeout` seconds."""
    end = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < end:
        try:
            value = pred()
            if value:
                return value
        except Exception as exc:  # the coordinator may be restarting
            last_exc = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_exc})")


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Build LocalClusters in tmp_path; all their processes are stopped after the test."""
    made: list[LocalCluster] = []

    def make(tokens: int, workers: int, worker_args: list[str] | None = None, **consensus: Any) -> LocalCluster:
        cl = LocalCluster(tmp_path, tiny_run(tmp_path, tokens, **consensus), workers=workers,
                          worker_args=["--threads", "1", "--retry-budget", "60", *(worker_args or [])])
        made.append(cl)
        return cl

    yield make
    for cl in made:
        cl.stop_all()


def dump_logs(cl: LocalCluster) -> str:
    parts = [f"--- coordinator\n{cl.coordinator.log_tail(30)}"]
    parts += [f"--- {w.name}\n{w.log_tail(15)}" for w in cl.workers]
    return "\n".join(parts)


@pytest.fixture
def wt() -> SimpleNamespace:
    """The helpers above, as a fixture (test modules here do not import each other)."""
    return SimpleNamespace(wait_for=wait_for, dump_logs=dump_logs)
