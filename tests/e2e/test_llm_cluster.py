"""Issue 13, end to end: a Llama-shape `hf` model with a BPE tokenizer trained on the run's own corpus (the
standard library, written to jsonl and parquet first) trains through a real coordinator process and real
worker processes on 127.0.0.1; the final version is exported with `trainnet export --hf` and transformers
loads it (AutoModelForCausalLM + AutoTokenizer) with our logits and our token ids.

The default-suite variant is tiny (1 layer, width 32, one worker); the slow one (`-m slow`) is the issue's
shape (4 layers, width 128, two workers, both sources)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from trainnet.data.prepare import prepare
from trainnet.data.sources import stdlib_docs, write_docs
from trainnet.models.checkpoint import load_checkpoint
from trainnet.models.export import export_cmd
from trainnet.worker.procs import LocalCluster, write_toml
from trainnet.worker.report import read_task_logs, save_final_model

SAMPLE = 'import json\n\ndef load(path):\n    """Read a file."""\n    with open(path) as fp:\n        return json.load(fp)\n'


def _wait(pred: Any, timeout: float, what: str, cl: LocalCluster) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not cl.coordinator.alive:
            raise AssertionError(f"coordinator exited:\n{cl.coordinator.log_tail(30)}")
        try:
            value = pred()
        except Exception:  # not up yet
            value = None
        if value:
            return value
        time.sleep(0.2)
    logs = "\n".join([cl.coordinator.log_tail(30)] + [w.log_tail(15) for w in cl.workers])
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def _prepare_both(tmp: Path, subdir: str, vocab: int, shard_tokens: int, val_every: int) -> Path:
    """Write the corpus as jsonl and as parquet, prepare both with a BPE trained on it: same tokenizer, same
    shards (root hash). Returns the parquet-prepared folder."""
    rows, _ = stdlib_docs(subdir)
    preps = []
    for name in ("docs.jsonl", "docs.parquet"):
        src = write_docs(tmp / "corpus" / name, rows)
        preps.append(prepare(src, tmp / f"prep-{src.suffix[1:]}", tokenizer=f"bpe:{vocab}", shard_tokens=shard_tokens,
                             val_every=val_every))
    a, b = preps
    assert a.info()["tokenizer"]["sha256"] == b.info()["tokenizer"]["sha256"]
    assert a.manifest.root_hash == b.manifest.root_hash and a.info()["vocab_size"] == vocab
    return b.root


def _run(tmp: Path, data: Path, hf: dict[str, Any], block: int, tokens: int, workers: int, h: int, batch: int,
         timeout: float) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], Path, Path]:
    """Coordinator + workers until the run is done; returns /v1/info, the final status, the workers' task
    records, and the final and initial versions as checkpoints (downloaded as a worker would)."""
    run = write_toml(tmp / "run.toml", {
        "name": "llm-e2e",
        "model": {"spec": "hf", "block_size": block, "tokenizer": str(data), "hf": hf},
        "data": {"path": str(data)},
        "inner": {"batch_size": batch, "lr": 3e-3},
        "consensus": {"h": h, "quorum": workers, "grace_s": 2.0, "lease_s": 60.0},
        "sim": {"tokens": tokens, "seed": 0, "codec": "q4", "eval_batches": 2, "eval_batch_size": 8},
    })
    with LocalCluster(tmp, run, workers=workers, worker_args=["--threads", "1", "--retry-budget", "60"]) as cl:
        cl.start_coordinator()
        cl.start_workers()  # at once: they retry until the coordinator answers (the imports overlap)
        info = cl.wait_ready(timeout)
        assert info["model"]["spec"] == "hf" and info["model"]["tokenizer"] is None  # the wire form: no paths
        assert info["data"]["format"] == "trainnet-tokens/1" and info["data"]["dtype"] == "uint16"
        _wait(lambda: cl.status().get("done"), timeout, "the run to finish", cl)
        # the audits of the workers' first tasks (probation) finish after their residuals are revealed
        st = _wait(lambda: (s := cl.status())["audits_pending"] == 0 and s, 120, "the audits", cl)
        final = save_final_model(cl.url, info, int(st["model_version"]), tmp / "final.safetensors")
        first = save_final_model(cl.url, info, 0, tmp / "v0.safetensors")
        curve = _wait(lambda: [p for p in cl.dashboard()["val_curve"] if p["version"] == st["model_version"]]
                      and cl.dashboard()["val_curve"], 60, "the final version's held-out loss", cl)
    st["val_curve"] = curve
    return info, st, read_task_logs(tmp / "workers"), final, first


def _export_and_load(ckpt: Path, data: Path, out: Path, vocab: int) -> tuple[torch.nn.Module, Any]:
    """`trainnet export CKPT --hf OUT --tokenizer DATA`, then transformers loads OUT: same token ids as our
    tokenizer, same logits as our model (1e-5)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainnet.data.tokenizing import load_tokenizer

    res = CliRunner().invoke(export_cmd, [str(ckpt), "--hf", str(out), "--tokenizer", str(data)])
    assert res.exit_code == 0, res.output
    model, mcfg = load_checkpoint(ckpt)
    twin = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(SAMPLE)["input_ids"]
    assert ids == load_tokenizer(data).encode(SAMPLE) and tok.decode(ids) == SAMPLE
    assert len(ids) < len(SAMPLE.encode()) and max(ids) < vocab  # BPE merges, inside the vocabulary
    x = torch.tensor([ids[: mcfg.block_size]])
    with torch.no_grad():
        ours, theirs = model(x)[0], twin(input_ids=x).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    return twin, tok


def test_tiny_llama_bpe_trains_through_the_cluster_exports_and_loads(tmp_path: Path):
    data = _prepare_both(tmp_path, "json", vocab=320, shard_tokens=1024, val_every=4)
    hf = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}
    info, st, rows, final, first = _run(tmp_path, data, hf, block=32, tokens=2 * 4 * 4 * 32, workers=1, h=4,
                                        batch=4, timeout=120)
    assert st["updates_accepted"] >= 2 and st["model_version"] >= 1, st
    assert len([r for r in rows if r["accepted"]]) == st["updates_accepted"]  # the worker's records agree
    assert st["audits_passed"] >= 1 and st["audits_failed"] == 0, st  # its first task was recomputed: equal
    trained, _ = load_checkpoint(final)
    init, _ = load_checkpoint(first)
    moved = [n for (n, p), (_, q) in zip(trained.named_parameters(), init.named_parameters(), strict=True)
             if not torch.equal(p, q)]
    assert moved and all(n.startswith("hf.") for n in moved)
    _export_and_load(final, data, tmp_path / "hf", vocab=320)


@pytest.mark.slow
def test_llama_4x128_bpe_two_workers_learns_exports_and_generates(tmp_path: Path):
    """The issue's shape: 4 layers, width 128, BPE-1024 trained on the email package of the standard library
    (jsonl and parquet), two workers; the held-out loss falls well below the uniform guess, and transformers
    generates from the exported folder."""
    data = _prepare_both(tmp_path, "email", vocab=1024, shard_tokens=8192, val_every=4)
    hf = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4,
          "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256}
    h, batch, block = 10, 8, 64
    info, st, rows, final, _ = _run(tmp_path, data, hf, block=block, tokens=20 * h * batch * block, workers=2, h=h,
                                    batch=batch, timeout=900)
    assert st["updates_accepted"] >= 20 and {r["worker"] for r in rows if r["accepted"]} == {"w0", "w1"}, st
    assert st["audits_passed"] >= 2 and st["audits_failed"] == 0, st  # each worker's first task, recomputed
    curve = st["val_curve"]
    assert curve[0]["val_loss"] == pytest.approx(math.log(1024), abs=0.3)  # version 0: about uniform
    assert curve[-1]["val_loss"] < curve[0]["val_loss"] - 0.7, curve
    twin, tok = _export_and_load(final, data, tmp_path / "hf", vocab=1024)
    prompt = tok("def ", return_tensors="pt")["input_ids"]
    out = twin.generate(prompt, max_new_tokens=24, do_sample=False)
    assert out.shape[1] > prompt.shape[1] and tok.decode(out[0]).startswith("def ")
