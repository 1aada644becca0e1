"""A worker refuses a task that does not fit its memory: a clear message (model, need, available), the lease
given back, exit status 6."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainnet.models import ModelConfig, build_model
from trainnet.worker.fit import FitCheck
from trainnet.worker.node import EXIT_NO_MEMORY

TASK = {"hparams": {"batch_size": 8, "seq_len": 64, "precision": "fp32"}}


def test_fit_check_message_names_model_need_and_memory() -> None:
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=64)
    model = build_model(cfg, seed=0)
    assert FitCheck("cpu", memory_gb=4.0).refusal(cfg, TASK, model) is None
    msg = FitCheck("cpu", memory_gb=0.001).refusal(cfg, TASK, model)
    assert msg is not None and msg.startswith("task refused: it does not fit in memory. Model gpt-bytes (0.1M params)")
    assert "batch 8 x 64 tokens, fp32: needs ~" in msg and "MiB (estimate" in msg
    assert "0.001 GiB (--memory-gb) on cpu is available" in msg
    # Without the model at hand the shape comes from the config (models/memory.py), same answer.
    assert FitCheck("cpu", memory_gb=0.001).refusal(cfg, TASK) == msg
    # Each rank of a multi-GPU node holds batch / ranks windows.
    assert "batch 4 x 64 tokens per rank" in FitCheck("cpu", memory_gb=0.001, ranks=2).refusal(cfg, TASK, model)


@pytest.mark.slow
def test_worker_refuses_a_task_too_big_for_its_memory(cluster_factory, wt, tmp_path: Path) -> None:
    cl = cluster_factory(tokens=4 * 5 * 8 * 32, workers=1, worker_args=["--memory-gb", "0.001"])
    cl.start_coordinator()
    cl.wait_ready()
    cl.start_workers()
    (worker,) = cl.workers
    wt.wait_for(lambda: not worker.alive, 90, "the worker to exit")
    assert worker.returncode == EXIT_NO_MEMORY == 6, wt.dump_logs(cl)
    log = worker.log_path.read_text()
    assert "task refused: it does not fit in memory. Model gpt-bytes" in log, log
    assert "needs ~" in log and "but 0.001 GiB (--memory-gb) on cpu is available" in log, log
    assert "abandoned lease" in log  # the shard goes back to the queue at once
    st = cl.status()
    assert st["leases_active"] == 0 and st["updates_accepted"] == 0, st
    assert not (cl.worker_dir(0) / "lease.json").exists()
