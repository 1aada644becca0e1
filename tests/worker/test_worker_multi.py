"""A multi-GPU node on CPU: `torchrun --nproc-per-node 2 -m trainnet worker` (gloo, FSDP2) through a real
coordinator is one participant: one node, its updates accepted, its first update audited by a single-process
recomputation (run_task) and passed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from trainnet.worker.procs import child_env, free_port

H = 10


def test_two_rank_fsdp_worker_is_one_participant(cluster_factory, wt, tmp_path: Path) -> None:
    cl = cluster_factory(tokens=2 * H * 8 * 32, workers=0, h=H, quorum=1)
    cl.start_coordinator()
    cl.wait_ready()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "trainnet", "worker", "--coordinator", cl.url,
           "--state", str(tmp_path / "node"), "--device", "cpu", "--threads", "1", "--quiet", "--retry-budget", "60"]
    out = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    st = cl.status()
    assert st["done"] and st["updates_accepted"] == 2 and st["updates_rejected"] == 0, st
    assert st["nodes"] == 1, st  # one key, one registration
    (row,) = cl.operator_status()["node_table"]
    assert row["accepted"] == 2, row
    rows = [json.loads(line) for line in (tmp_path / "node" / "tasks.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["accepted"] for r in rows), rows
    assert out.stdout.count("registered ") == 1  # only rank 0 talks to the coordinator
    st = wt.wait_for(lambda: (s := cl.status())["audits_pending"] == 0 and s["audits_passed"] >= 1 and s, 90,
                     "the probation audit")
    assert st["audits_failed"] == 0 and not st["nodes_banned"], st
