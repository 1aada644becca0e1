"""Helpers for the observability tests: a live tiny run fed by in-test clients that report energy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import torch

from servers.coordinator import CoordinatorProc, HttpNode, free_port, make_run

ENERGY = {"energy_j": 12.5, "energy_measured": False,
          "energy_source": "estimate: test client, 12.5 J per task (assumption)", "task_s": 0.05}


def train_bytes(c: HttpNode, task: dict[str, Any], energy: dict[str, Any] | None = ENERGY) -> bytes:
    """Run the task like a worker and encode the update with an energy report in `extra`."""
    return c.train(task, extra=energy or {})


def one_task(c: HttpNode, energy: dict[str, Any] | None = ENERGY) -> httpx.Response | None:
    """Lease, train and upload one task; None when no task is handed out (run done or budget reached)."""
    task = c.lease().get("task")
    if not task:
        return None
    return c.upload(task, train_bytes(c, task, energy))


class LiveRun:
    """A coordinator subprocess on a tiny run plus two registered in-test clients."""

    def __init__(self, tmp: Path, tokens: int) -> None:
        torch.manual_seed(0)
        self.tmp = tmp
        self.run_toml = make_run(tmp, tokens=tokens)
        self.state = tmp / "state"
        # rate limiting has its own tests; here one client uploads many times a second on purpose
        self.server = CoordinatorProc(self.run_toml, self.state, free_port(), extra=["--rate", "0", "--ip-rate", "0"])
        self.server.wait_ready()
        self.url = self.server.url
        self.clients = [HttpNode(self.url, tmp / f"key{i}") for i in range(2)]
        for c in self.clients:
            assert c.register().status_code == 200

    def dashboard(self) -> dict[str, Any]:
        return self.server.operator_get("/v1/dashboard")

    def step(self, n: int = 2) -> None:
        """n uploads, alternating clients (quorum 2: every two accepted uploads make a version)."""
        for i in range(n):
            r = one_task(self.clients[i % 2])
            assert r is None or r.status_code == 200, r.text

    def wait_version(self, above: int, timeout: float = 30.0) -> int:
        """Merges run off the request path: wait (bounded) until a version above `above` is published."""
        end = time.time() + timeout
        while True:
            v = int(self.dashboard()["model_version"])
            if v > above or time.time() > end:
                return v
            time.sleep(0.1)

    def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        end = time.time() + timeout
        while time.time() < end:
            view = self.dashboard()
            if view["done"]:
                break
            for c in self.clients:
                r = one_task(c)
                assert r is None or r.status_code in (200, 409), r.text
            time.sleep(0.2)
        view = self.dashboard()
        assert view["done"], "run did not finish"
        while time.time() < end and not any(p["version"] == view["model_version"] for p in view["val_curve"]):
            time.sleep(0.2)  # the evaluator is a moment behind the last merge
            view = self.dashboard()
        return view

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.server.stop()
