"""The simulated swarm of the load benchmark: N SwarmNodes that register, then lease, heartbeat like the real
worker (when half of the remaining lease has passed; worker/node.py `_Heartbeat`), and upload after a simulated
task time, until a deadline. Every request is recorded as a Sample.

    swarm = Swarm(http, info, n=4200, task_s=(30.0, 90.0), seed=0)
    reg = await swarm.register_all(concurrency=256)          # wall seconds + samples
    await swarm.run(seconds=180.0, stagger_s=90.0)           # samples in swarm.samples
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from .http import MiniHttp
from .node import Reply, SwarmNode, UpdateMaker


@dataclass
class Sample:
    kind: str  # register | lease | heartbeat | upload
    start: float  # seconds since the phase started (time.monotonic based)
    end: float
    ms: float
    status: int  # 0: no HTTP answer (see error)
    error: str  # transport error, or the reply's error code for a 4xx/5xx
    accepted: bool = False  # uploads: 200 with accepted: true
    task: bool = False  # leases: a task was handed out


class Swarm:
    def __init__(self, http: MiniHttp, info: dict[str, Any], n: int, task_s: tuple[float, float],
                 seed: int = 0) -> None:
        self.http, self.info, self.task_s = http, info, task_s
        self.rng = random.Random(seed)
        self.maker = UpdateMaker(info)
        self.nodes = [SwarmNode(http, str(info["run_id"]), self.maker, i) for i in range(n)]
        self.samples: list[Sample] = []
        self.t0 = time.monotonic()

    def _record(self, kind: str, t_start: float, r: Reply, **flags: bool) -> None:
        end = time.monotonic() - self.t0
        err = r.error or ("" if r.status == 200 else str(r.data.get("error", f"http_{r.status}")))
        self.samples.append(Sample(kind, t_start, end, r.ms, r.status, err, **flags))

    async def register_all(self, concurrency: int = 256) -> float:
        """Register every node (at most `concurrency` in flight); returns the wall seconds until all answered."""
        self.t0 = time.monotonic()
        sem = asyncio.Semaphore(concurrency)

        async def one(node: SwarmNode) -> None:
            async with sem:
                for _ in range(5):  # a node whose registration failed tries again, as a worker would
                    t = time.monotonic() - self.t0
                    r = await node.register()
                    self._record("register", t, r)
                    if r.status == 200:
                        return
                    await asyncio.sleep(1.0)

        await asyncio.gather(*(one(n) for n in self.nodes))
        return time.monotonic() - self.t0

    async def run(self, seconds: float, stagger_s: float) -> None:
        """Every node starts at a random moment in [0, stagger_s) and works until `seconds` have passed."""
        self.t0 = time.monotonic()
        until = self.t0 + seconds
        await asyncio.gather(*(self._life(n, self.rng.uniform(0.0, stagger_s), until,
                                          random.Random(self.rng.random())) for n in self.nodes))

    async def _sleep_until(self, when: float, until: float) -> bool:
        """Sleep until monotonic `when`; False if the run ends first."""
        if when >= until:
            await asyncio.sleep(max(0.0, until - time.monotonic()))
            return False
        await asyncio.sleep(max(0.0, when - time.monotonic()))
        return True

    async def _life(self, node: SwarmNode, offset: float, until: float, rng: random.Random) -> None:
        if not await self._sleep_until(self.t0 + offset, until):
            return
        while time.monotonic() < until:
            t = time.monotonic() - self.t0
            r = await node.lease()
            task = r.data.get("task") if r.status == 200 else None
            self._record("lease", t, r, task=task is not None)
            if task is None:
                after = r.data.get("retry_after_s") if r.status == 200 else None
                wait = min(float(after), 30.0) if isinstance(after, int | float) else rng.uniform(1.0, 5.0)
                if not await self._sleep_until(time.monotonic() + wait * rng.uniform(0.9, 1.1), until):
                    return
                continue
            if not await self._task(node, task, r.data.get("upload") or {}, until, rng):
                return

    async def _task(self, node: SwarmNode, task: dict[str, Any], upload: dict[str, Any], until: float,
                    rng: random.Random) -> bool:
        """Simulate the task (heartbeats included), then upload. False if the run ended first."""
        done = time.monotonic() + rng.uniform(*self.task_s)
        deadline = float(task["deadline"])  # the coordinator's clock is this machine's clock
        beating = True
        while beating:
            left = deadline - time.time()
            beat = time.monotonic() + max(0.5, left / 2)
            if beat >= done:
                break
            if not await self._sleep_until(beat, until):
                return False
            t = time.monotonic() - self.t0
            r = await node.heartbeat(str(task["task_id"]))
            self._record("heartbeat", t, r)
            if r.status == 200:
                deadline = float(r.data.get("deadline", deadline))
            elif 400 <= r.status < 500:
                beating = False  # lease gone: the real worker stops heartbeating and still uploads
        if not await self._sleep_until(done, until):
            return False
        prepared = node.update(task)
        t = time.monotonic() - self.t0
        r = await node.upload(task, upload, prepared)
        self._record("upload", t, r, accepted=r.status == 200 and bool(r.data.get("accepted")))
        return True
