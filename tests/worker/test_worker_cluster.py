"""Several real worker processes train a tiny run to completion against a real coordinator process;
`trainnet sample` then prints text from a checkpoint the run produced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors import safe_open

from trainnet.model.sample import CONFIG_KEY, sample_cmd
from trainnet.worker.report import read_task_logs

H = 20  # tasks long enough that merges (tens of milliseconds) keep up with them, as in any real run
TASK_TOKENS = H * 8 * 32  # h * batch * seq


@pytest.mark.slow
def test_three_workers_finish_a_run_and_sample_prints_text(cluster_factory, wt, tmp_path: Path) -> None:
    cl = cluster_factory(tokens=20 * TASK_TOKENS, workers=3, h=H)
    cl.start_coordinator()
    info = cl.wait_ready()
    assert info["codec"] == "topk:0.1+q4"
    cl.start_workers()
    wt.wait_for(lambda: all(not w.alive for w in cl.workers), 75, "all workers to exit")
    assert [w.returncode for w in cl.workers] == [0, 0, 0], wt.dump_logs(cl)
    st = cl.status()
    assert st["done"] and st["tokens"] >= 20 * TASK_TOKENS, st
    assert st["model_version"] >= 1
    # Every worker-side record of an acceptance matches the coordinator's count: nothing lost or doubled.
    rows = read_task_logs(tmp_path / "workers")
    accepted = [r for r in rows if r["accepted"]]
    assert len(accepted) == st["updates_accepted"], wt.dump_logs(cl)
    assert len({r["task_id"] for r in accepted}) == len(accepted)
    # Compressed upload really is smaller than the fp32 update it stands for (bytes measured).
    assert all(r["bytes_up"] * 5 < r["bytes_raw"] for r in rows)
    # The shared model learned: the coordinator's held-out loss of the last version is well below version 0's.
    curve = wt.wait_for(lambda: [p for p in cl.dashboard()["val_curve"] if p["version"] == st["model_version"]]
                        and cl.dashboard()["val_curve"], 30, "the final version's held-out loss")
    assert curve[-1]["val_loss"] < curve[0]["val_loss"] - 0.3, curve
    assert st["model_version"] >= 4  # several versions were published along the way
    # Each worker's lease file is gone (nothing held) and its error-feedback residual was saved.
    for i in range(3):
        wd = cl.worker_dir(i)
        assert not (wd / "lease.json").exists()
        if any(r["worker"] == wd.name and r["accepted"] for r in rows):
            assert list((wd / "feedback").glob("*/error_feedback.safetensors"))

    # `trainnet sample` on a checkpoint the run produced: a worker's copy of a published version (config from
    # its metadata, or the documented sidecar JSON when a file lacks the metadata).
    ckpt = cl.worker_dir(0) / "model.safetensors"
    assert ckpt.exists(), list(cl.worker_dir(0).iterdir())
    with safe_open(str(ckpt), framework="pt") as f:
        has_meta = CONFIG_KEY in (f.metadata() or {})
    if not has_meta:
        ckpt.with_suffix(".json").write_text(json.dumps(info["model"]))
    runner = CliRunner()
    res = runner.invoke(sample_cmd, ["--checkpoint", str(ckpt), "--prompt", "def ", "--tokens", "60",
                                     "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("def ") and len(res.output) > 40
    again = runner.invoke(sample_cmd, ["--checkpoint", str(ckpt), "--prompt", "def ", "--tokens", "60",
                                       "--seed", "1"])
    assert again.output == res.output  # seeded sampling is deterministic
    # The worker's own copy of the model carries its config in the metadata and samples too.
    res = runner.invoke(sample_cmd, ["--checkpoint", str(cl.worker_dir(0) / "model.safetensors"),
                                     "--tokens", "20"])
    assert res.exit_code == 0 and res.output.strip(), res.output
