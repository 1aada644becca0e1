"""Faults with real processes: a worker SIGKILLed mid-task, a coordinator restarted under load."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from trainnet.worker.report import read_task_logs

LONG_H = 600  # ~2.3 s per task on an idle core here: longer than the lease, so only heartbeats keep it alive
LEASE_S = 1.2
PAUSE_H = 300  # ~1.2 s per task: long enough to be stopped mid-task 0.5 s after the lease


def test_killed_worker_lease_expires_and_heartbeats_keep_leases(cluster_factory, wt, tmp_path: Path) -> None:
    cl = cluster_factory(tokens=2 * LONG_H * 8 * 32, workers=2, h=LONG_H, quorum=1, lease_s=LEASE_S, grace_s=1.0)
    cl.start_coordinator()
    cl.wait_ready()
    victim, rescuer = cl.workers
    # SIGKILL mid-task: nobody gives the lease back; it expires and the shard is requeued.
    victim.start()
    lease_file = cl.worker_dir(0) / "lease.json"
    held = wt.wait_for(lambda: lease_file.exists() and json.loads(lease_file.read_text()), 40,
                       "the first worker to hold a lease", every=0.02)
    victim.signal(signal.SIGKILL)
    victim.proc.wait(5)
    assert cl.status()["leases_active"] == 1
    st = wt.wait_for(lambda: (s := cl.status())["leases_expired"] >= 1 and s, 15, "the lease to expire")
    assert st["leases_active"] == 0 and st["tokens"] == 0
    # Another worker trains the whole run; its tasks outlast the lease and heartbeats keep them alive.
    rescuer.start()
    wt.wait_for(lambda: not rescuer.alive, 90, "the second worker to finish the run")
    assert rescuer.returncode == 0, wt.dump_logs(cl)
    st = cl.status()
    assert st["done"] and st["updates_accepted"] == 2 and st["leases_expired"] == 1, st
    rows = [r for r in read_task_logs(tmp_path / "workers") if r["worker"] == "w1" and r["accepted"]]
    assert held["shard_id"] in [r["shard_id"] for r in rows]
    assert max(r["train_s"] for r in rows) > LEASE_S  # measured: a task outlived its initial lease


def test_stopped_worker_pauses_keeps_its_lease_and_resumes(cluster_factory, wt, tmp_path: Path) -> None:
    cl = cluster_factory(tokens=PAUSE_H * 8 * 32, workers=1, h=PAUSE_H, quorum=1, lease_s=60.0)
    cl.start_coordinator()
    cl.wait_ready()
    (worker,) = cl.workers
    worker.start()
    lease_file = cl.worker_dir(0) / "lease.json"
    wt.wait_for(lambda: lease_file.exists(), 40, "the worker to hold a lease", every=0.02)
    time.sleep(0.5)
    # SIGTERM (what Ctrl-C does first) mid-task: the task pauses at its next step and is saved; the lease
    # is kept (no abandon) and the worker exits 0.
    worker.signal(signal.SIGTERM)
    worker.proc.wait(15)
    assert worker.returncode == 0, wt.dump_logs(cl)
    log = worker.log_path.read_text()
    assert "paused at" in log and "abandoned lease" not in log, log
    paused_task = json.loads(lease_file.read_text())["task_id"]
    assert (cl.worker_dir(0) / "partial.safetensors").exists()
    st = cl.status()
    assert st["leases_active"] == 1 and st["leases_expired"] == 0 and st["updates_accepted"] == 0, st
    # Restarted within the lease, it resumes the paused task (the same task id, not a new lease).
    worker.start()
    wt.wait_for(lambda: not worker.alive, 90, "the worker to finish the run")
    assert worker.returncode == 0, wt.dump_logs(cl)
    assert f"resuming task {paused_task}" in worker.log_path.read_text(), wt.dump_logs(cl)
    st = cl.status()
    assert st["done"] and st["updates_accepted"] == 1 and st["leases_expired"] == 0, st
    rows = [r for r in read_task_logs(tmp_path / "workers") if r["accepted"]]
    assert [r["task_id"] for r in rows] == [paused_task]
    assert not (cl.worker_dir(0) / "partial.safetensors").exists()


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_worker_rides_out_a_coordinator_restart(cluster_factory, wt, tmp_path: Path) -> None:
    cl = cluster_factory(tokens=50 * 5 * 8 * 32, workers=2)
    cl.start_coordinator()
    cl.wait_ready()
    cl.start_workers()
    wt.wait_for(lambda: cl.status()["updates_accepted"] >= 3, 40, "a few accepted updates")
    pool = children_of(cl.coordinator.proc.pid)
    assert pool, "the coordinator runs its data plane in child processes"
    cl.coordinator.signal(signal.SIGKILL)
    cl.coordinator.proc.wait(5)
    # Its data-plane children follow it (they would otherwise hold the model in memory forever).
    wt.wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pool), 10, "the pool children to exit")
    time.sleep(1.5)  # workers now hit connection errors and back off
    assert all(w.alive for w in cl.workers), wt.dump_logs(cl)
    cl.start_coordinator()
    cl.wait_ready()
    wt.wait_for(lambda: all(not w.alive for w in cl.workers), 60, "workers to finish after the restart")
    assert [w.returncode for w in cl.workers] == [0, 0], wt.dump_logs(cl)
    st = cl.status()
    assert st["done"], st
    logs = "".join(w.log_path.read_text() for w in cl.workers)
    assert "retry" in logs  # they really saw the outage and retried
    rows = read_task_logs(tmp_path / "workers")
    # No task id is acknowledged twice, and the coordinator counted at least what workers saw accepted
    # (an acceptance whose reply was lost in the crash shows up as a replay, not a second accept).
    acc = [r["task_id"] for r in rows if r["accepted"]]
    assert len(acc) == len(set(acc))
    assert st["updates_accepted"] >= len([r for r in rows if r["outcome"].startswith("accepted v")])
