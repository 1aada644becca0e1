"""Issue 13: a Llama-shape `hf` model with a BPE tokenizer against the byte-level GPT, at EQUAL BYTES OF TEXT,
both trained through the real coordinator and worker processes on this machine (LocalCluster, 127.0.0.1).

    PYTHONPATH=src python bench/bench_llm.py --seeds 0 1 --text-bytes 1000000      # -> bench/results/llm.md
    PYTHONPATH=src python bench/bench_llm.py --quick --out /tmp/bench-llm-quick     # smoke run, minutes

What it does, every step through the shipped code paths:
1. The default corpus (every *.py file of this interpreter's standard library, the byte corpus's order) is
   written as documents to train.jsonl and train.parquet (every 100th document is held out instead, in
   heldout.jsonl; files that are not UTF-8 cannot be jsonl/parquet text and are left out, named in the report).
2. `trainnet data prepare` (subprocesses, the real CLI): BPE-4096 trained on the training documents and the
   shards from the jsonl, the same from the parquet (the tokenizer sha256 and the shards' root hash must be
   equal), and the byte tokenizer from the jsonl for gpt-bytes (same documents, "\\n\\n" between them).
3. Per seed, two runs with a coordinator and 2 worker processes: the Llama on the BPE shards (seed 0 reads
   the jsonl-prepared folder, seed 1 the parquet one, ...) and gpt-bytes on the byte shards. Token budgets
   are set so that both see the same number of bytes of text: gpt-bytes B tokens (1 byte each), the Llama
   B / (bytes per token of the BPE training shards). Bytes seen are then counted from the workers' task
   records: each accepted task's tokens x the bytes/token of the shard it read (its windows are uniform over
   that shard), so the Llama's figure is an expectation, gpt-bytes' exact.
4. The final version is downloaded as a worker would (signed manifest, hashed blobs), the Llama's is exported
   with `trainnet export CKPT --hf OUT --tokenizer DATA` and loaded with transformers' AutoModelForCausalLM and
   AutoTokenizer: token ids and logits are compared with ours on a held-out sample.
5. Both final models are evaluated on the same held-out text (heldout.jsonl, each document followed by the
   tokenizer's separator): every token once, consecutive windows of block_size tokens
   (models.units.evaluate_stream); bits/byte = nats / (ln 2 x UTF-8 bytes of the targets).
   A reference without a model: a unigram model with token frequencies counted on the prepared training
   shards, on the same targets (unigram_baseline), for each tokenization.

Everything in the report is measured here, except where it says "expectation".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"

import torch  # noqa: E402

from trainnet.worker.procs import LocalCluster, child_env, write_toml  # noqa: E402

HELDOUT_EVERY = 100  # every 100th document of the corpus is held out (17 documents, 244 kB here)
LLAMA = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512}
GPT = {"n_layer": 4, "n_head": 4, "n_embd": 128}
# The same for both runs: the context (tokens), inner steps per task, batch, learning rate, outer settings.
BLOCK, H, BATCH, LR, WORKERS, QUORUM, CODEC = 128, 20, 8, 3e-3, 2, 2, "q4"
SAMPLE_TOKENS = 128  # the export check's held-out sample


def cli(*args: str, log: list[str]) -> float:
    """Run `trainnet ARGS` (python -m trainnet.cli, this checkout); returns the wall seconds."""
    log.append("trainnet " + " ".join(args))
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "trainnet.cli", *args], check=True, env=child_env())
    return time.monotonic() - t0


def write_corpus(out: Path, subdir: str | None, every: int) -> dict[str, Any]:
    from trainnet.data.sources import stdlib_docs, write_docs

    rows, skipped = stdlib_docs(subdir)
    held = [r for i, r in enumerate(rows) if i % every == every - 1]
    train = [r for i, r in enumerate(rows) if i % every != every - 1]
    write_docs(out / "train.jsonl", train)
    write_docs(out / "train.parquet", train)
    write_docs(out / "heldout.jsonl", held)
    nbytes = lambda rs: sum(len(r["text"].encode("utf-8")) for r in rs)  # noqa: E731
    return {"documents": len(rows), "heldout_every": every, "train_docs": len(train), "train_bytes": nbytes(train),
            "heldout_docs": len(held), "heldout_bytes": nbytes(held), "heldout_paths": [r["path"] for r in held],
            "skipped_not_utf8": [str(p) for p in skipped]}


def prepared_stats(path: Path) -> dict[str, Any]:
    from trainnet.data.token_corpus import load_prepared

    c = load_prepared(path)
    train = [e for e in c.manifest.shards if e.split == "train"]
    info = c.info()
    return {"path": str(path), "shards": len(c), "train_shards": len(train), "ntokens": c.ntokens,
            "train_tokens": sum(e.ntokens for e in train), "train_text_bytes": sum(e.text_bytes for e in train),
            "bytes_per_token": sum(e.text_bytes for e in train) / sum(e.ntokens for e in train),
            "tokenizer_sha256": info["tokenizer"]["sha256"], "vocab_size": info["vocab_size"],
            "root_hash": info["root_hash"],
            "shard_bpt": {e.id: e.text_bytes / e.ntokens for e in c.manifest.shards}}


def run_config(kind: str, seed: int, data: Path, tokens: int) -> dict[str, Any]:
    if kind == "llama":
        model = {"spec": "hf", "block_size": BLOCK, "tokenizer": str(data), "hf": LLAMA}
    else:
        model = {"spec": "gpt-bytes", "block_size": BLOCK, **GPT}
    return {"name": f"llm-{kind}-s{seed}", "model": model, "data": {"path": str(data)},
            "inner": {"batch_size": BATCH, "lr": LR},
            "consensus": {"h": H, "quorum": QUORUM, "grace_s": 10.0, "lease_s": 600.0},
            "sim": {"tokens": tokens, "seed": seed, "codec": CODEC, "eval_batches": 4, "eval_batch_size": 16}}


def train(kind: str, seed: int, data: Path, tokens: int, out: Path, timeout: float) -> dict[str, Any]:
    """One run: coordinator + WORKERS workers until the token budget is accepted; the final version saved."""
    from trainnet.worker.report import read_task_logs, save_final_model

    out.mkdir(parents=True, exist_ok=True)
    run = write_toml(out / "run.toml", run_config(kind, seed, data, tokens))
    t0 = time.monotonic()
    with LocalCluster(out, run, workers=WORKERS, worker_args=["--threads", "1"]) as cl:
        cl.start_coordinator()
        cl.start_workers()
        info = cl.wait_ready(300)
        st: dict[str, Any] = {}
        while time.monotonic() - t0 < timeout:
            if not cl.coordinator.alive:
                raise RuntimeError(f"coordinator exited:\n{cl.coordinator.log_tail(30)}")
            try:
                st = cl.status()
            except Exception:  # a busy coordinator may miss one poll
                st = {}
            if st.get("done"):
                break
            time.sleep(2.0)
        else:
            raise RuntimeError(f"{kind} seed {seed}: not done after {timeout:.0f}s ({st})")
        wall = time.monotonic() - t0
        end = time.monotonic() + 300  # the probation audits finish once their residuals are revealed
        while time.monotonic() < end and st.get("audits_pending"):
            time.sleep(2.0)
            st = cl.status()
        version = int(st["model_version"])
        ckpt = save_final_model(cl.url, info, version, out / "final.safetensors")
        curve: list[dict[str, Any]] = []
        end = time.monotonic() + 120
        while time.monotonic() < end and not any(p["version"] == version for p in curve):
            curve = cl.dashboard().get("val_curve") or []
            time.sleep(1.0)
    rows = read_task_logs(out / "workers")
    acc = [r for r in rows if r.get("accepted")]
    audits = audit_log(out)
    return {"kind": kind, "seed": seed, "data": str(data), "wall_s": wall, "status": {k: st.get(k) for k in (
        "model_version", "tokens", "tokens_target", "updates_accepted", "updates_rejected", "reject_reasons",
        "audits_passed", "audits_failed", "outer_steps")}, "checkpoint": str(ckpt), "val_curve": curve,
        "tasks": [{k: r.get(k) for k in ("shard_id", "tokens", "accepted", "train_s", "loss_first", "loss_last",
                                          "worker")} for r in rows],
        "accepted_tokens": sum(int(r["tokens"]) for r in acc), "audits": audits,
        "worker_train_s": sum(float(r.get("train_s") or 0) for r in rows)}


def audit_log(run_dir: Path) -> dict[str, int]:
    """Audits the coordinator logged as passed / FAILED (server/audit_api.py: "audit T of N: passed")."""
    text = (run_dir / "logs" / "coordinator.log").read_text(errors="replace")
    return {"passed": len(re.findall(r"audit \S+ of \S+: passed", text)),
            "failed": len(re.findall(r"audit \S+ of \S+: FAILED", text))}


def bytes_seen(result: dict[str, Any], shard_bpt: dict[int, float]) -> float:
    """Bytes of text the accepted tasks trained on: tokens x the bytes/token of each task's shard."""
    return sum(int(t["tokens"]) * shard_bpt[int(t["shard_id"])] for t in result["tasks"] if t["accepted"])


def export_check(ckpt: Path, data: Path, out: Path, heldout: Path, log: list[str]) -> dict[str, Any]:
    """`trainnet export`, then transformers loads the folder: same ids and logits as ours on held-out text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainnet.data.sources import iter_docs
    from trainnet.data.tokenizing import load_tokenizer
    from trainnet.models.checkpoint import load_checkpoint

    wall = cli("export", str(ckpt), "--hf", str(out), "--tokenizer", str(data), log=log)
    twin = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ours, _ = load_checkpoint(ckpt)
    text = next(iter(iter_docs(heldout))).text
    ids = tok(text)["input_ids"]
    same_ids = ids == load_tokenizer(data).encode(text)
    x = torch.tensor([ids[:SAMPLE_TOKENS]])
    with torch.no_grad():
        a, b = ours(x)[0], twin(input_ids=x).logits
    return {"export_wall_s": wall, "files": sorted(p.name for p in out.iterdir()), "same_token_ids": same_ids,
            "sample_tokens": int(x.numel()), "max_abs_logit_diff": float((a - b).abs().max()),
            "logits_close_1e-5": bool(torch.allclose(a, b, rtol=1e-5, atol=1e-5)),
            "hf_class": type(twin).__name__, "decode_roundtrip": tok.decode(ids) == text}


def unigram_baseline(prep: Path, stream: torch.Tensor, token_bytes: torch.Tensor,
                     text_bytes: int) -> dict[str, float]:
    """A reference point that needs no model: held-out bits/byte of a unigram (context-free) model whose token
    frequencies are counted on the prepared TRAINING shards (the shards the runs sample from; add-0.5
    smoothing), (a) over all of them and (b) over the shards in id order up to `text_bytes` bytes of text (about
    the runs' budget). Same targets and bytes as heldout_units (stream[1:]). A model below it has learned more
    than token frequencies; above it, not yet."""
    from trainnet.data.token_corpus import load_prepared

    c = load_prepared(prep)
    targets = stream.reshape(-1)[1:].to(torch.int64)
    nbytes = int(token_bytes.to(torch.int64)[targets].sum())
    vocab = max(int(c.info()["vocab_size"]), int(targets.max()) + 1)
    full, part, seen = torch.zeros(vocab, dtype=torch.float64), torch.zeros(vocab, dtype=torch.float64), 0
    for e in sorted((e for e in c.manifest.shards if e.split == "train"), key=lambda e: e.id):
        counts = torch.bincount(c.shard(e.id).tokens.to(torch.int64), minlength=vocab).double()
        full += counts
        if seen < text_bytes:
            part, seen = part + counts, seen + e.text_bytes
    out: dict[str, float] = {"first_shards_text_bytes": seen}
    for key, counts in (("all_train", full), ("first_shards", part)):
        logp = torch.log((counts + 0.5) / (counts + 0.5).sum())
        out[f"{key}_bits_per_byte"] = float(-logp[targets].sum()) / (math.log(2) * nbytes)
    return out


def heldout_units(ckpt: Path, stream: torch.Tensor, token_bytes: torch.Tensor) -> dict[str, float]:
    from trainnet.models.checkpoint import load_checkpoint
    from trainnet.models.units import evaluate_stream

    model, mcfg = load_checkpoint(ckpt)
    t0 = time.monotonic()
    units = evaluate_stream(model, None, stream, mcfg.block_size, token_bytes, batch_size=16)
    return units | {"eval_s": time.monotonic() - t0}


def unigram_from_work(res: dict[str, Any]) -> dict[str, Any]:
    """unigram_baseline for results from before it existed, from the prepared folders their run left behind."""
    from trainnet.data.prepare import encode_docs
    from trainnet.data.tokenizing import BytesTokenizer, load_tokenizer, token_byte_lengths

    out: dict[str, Any] = {}
    for kind, key in (("llama", "bpe-jsonl"), ("gpt-bytes", "bytes")):
        prep = Path(res["prepared"][key]["path"])
        heldout = prep.parent.parent / "corpus" / "heldout.jsonl"
        tok = BytesTokenizer() if key == "bytes" else load_tokenizer(prep)
        stream = torch.from_numpy(encode_docs(heldout, tok))
        out[kind] = unigram_baseline(prep, stream, token_byte_lengths(tok), int(res["text_bytes"]))
    return out


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/trainnet-bench-llm"), help="Work folder (corpus, runs).")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--text-bytes", type=int, default=1_000_000, help="Bytes of text each run trains on.")
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary.")
    ap.add_argument("--md", type=Path, default=ROOT / "bench/results/llm.md")
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/llm.json")
    ap.add_argument("--timeout", type=float, default=3600.0, help="Seconds one run may take.")
    ap.add_argument("--quick", action="store_true", help="Smoke run: the email package, 60 kB of text, BPE-1024.")
    ap.add_argument("--report-only", action="store_true", help="Rewrite --md from --json (and the runs' logs).")
    args = ap.parse_args()
    if args.report_only:
        res = json.loads(args.json.read_text())
        for r in res["runs"]:
            r.setdefault("audits", audit_log(Path(r["checkpoint"]).parent))
        if "unigram" not in res:  # results written before the unigram reference existed: add it from the work folder
            res["unigram"] = unigram_from_work(res)
            args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
        args.md.write_text(report(res, args))
        print(f"wrote {args.md}")
        return
    if args.quick:
        args.text_bytes, args.vocab = min(args.text_bytes, 60_000), min(args.vocab, 1024)
    torch.set_num_threads(2)
    t_start = time.monotonic()
    res: dict[str, Any] = {"machine_start": machine(), "argv": sys.argv[1:], "commands": [],
                           "text_bytes": args.text_bytes}
    log: list[str] = res["commands"]
    corpus = args.out / "corpus"
    prep = args.out / "prep"
    if (prep / "bytes" / "manifest.json").exists():
        raise SystemExit(f"{args.out} holds an earlier run; choose another --out or remove it")
    res["corpus"] = write_corpus(corpus, "email" if args.quick else None, 7 if args.quick else HELDOUT_EVERY)
    shard = ["--shard-tokens", "8192", "--val-every", "8"] if args.quick else []
    res["prepare_wall_s"] = {
        "bpe_jsonl": cli("data", "prepare", str(corpus / "train.jsonl"), "--out", str(prep / "bpe-jsonl"),
                         "--tokenizer", f"bpe:{args.vocab}", "--quiet", *shard, log=log),
        "bpe_parquet": cli("data", "prepare", str(corpus / "train.parquet"), "--out", str(prep / "bpe-parquet"),
                           "--tokenizer", f"bpe:{args.vocab}", "--quiet", *shard, log=log),
        "bytes_jsonl": cli("data", "prepare", str(corpus / "train.jsonl"), "--out", str(prep / "bytes"),
                           "--tokenizer", "bytes", "--quiet", *shard, log=log)}
    stats = {k: prepared_stats(prep / k) for k in ("bpe-jsonl", "bpe-parquet", "bytes")}
    a, b = stats["bpe-jsonl"], stats["bpe-parquet"]
    res["jsonl_equals_parquet"] = {"tokenizer": a["tokenizer_sha256"] == b["tokenizer_sha256"],
                                   "root_hash": a["root_hash"] == b["root_hash"]}
    if not all(res["jsonl_equals_parquet"].values()):
        raise SystemExit(f"jsonl and parquet prepared differently: {res['jsonl_equals_parquet']}")
    res["prepared"] = {k: {kk: vv for kk, vv in v.items() if kk != "shard_bpt"} for k, v in stats.items()}

    from trainnet.data.prepare import encode_docs
    from trainnet.data.tokenizing import BytesTokenizer, load_tokenizer, token_byte_lengths
    from trainnet.models import ModelConfig, count_params

    bpe = load_tokenizer(prep / "bpe-jsonl")
    streams = {"llama": (torch.from_numpy(encode_docs(corpus / "heldout.jsonl", bpe)), token_byte_lengths(bpe)),
               "gpt-bytes": (torch.from_numpy(encode_docs(corpus / "heldout.jsonl", BytesTokenizer())),
                             token_byte_lengths(BytesTokenizer()))}
    res["params"] = {
        "llama": count_params(ModelConfig.from_dict(run_config("llama", 0, prep / "bpe-jsonl", 1)["model"])),
        "gpt-bytes": count_params(ModelConfig.from_dict(run_config("gpt-bytes", 0, prep / "bytes", 1)["model"]))}
    res["budget_tokens_llama"] = round(args.text_bytes / a["bytes_per_token"])
    res["unigram"] = {k: unigram_baseline(prep / d, *streams[k], args.text_bytes)
                      for k, d in (("llama", "bpe-jsonl"), ("gpt-bytes", "bytes"))}
    res["runs"] = []
    for seed in args.seeds:
        llama_data = prep / ("bpe-jsonl" if seed % 2 == 0 else "bpe-parquet")
        budget = res["budget_tokens_llama"]
        for kind, data, bpt in (("llama", llama_data, stats["bpe-jsonl"]["shard_bpt"]),
                                ("gpt-bytes", prep / "bytes", stats["bytes"]["shard_bpt"])):
            run_dir = args.out / f"{kind}-s{seed}"
            print(f"[{time.monotonic() - t_start:6.0f}s] training {kind} seed {seed} ({budget:,} tokens)", flush=True)
            r = train(kind, seed, data, budget, run_dir, args.timeout)
            r["budget_tokens"] = budget
            r["bytes_seen"] = bytes_seen(r, bpt)
            # gpt-bytes then gets the bytes this seed's Llama run actually saw (runs overshoot by up to a merge)
            budget = round(r["bytes_seen"])
            r["heldout"] = heldout_units(Path(r["checkpoint"]), *streams[kind])
            if kind == "llama":
                r["export"] = export_check(Path(r["checkpoint"]), data, run_dir / "hf", corpus / "heldout.jsonl", log)
            print(f"   {kind} seed {seed}: {r['heldout']['bits_per_byte']:.3f} bits/byte, "
                  f"{r['bytes_seen']:,.0f} bytes seen, {r['wall_s']:.0f}s", flush=True)
            res["runs"].append(r)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")  # partial results survive
    res["machine_end"] = machine()
    res["total_wall_s"] = time.monotonic() - t_start
    args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    args.md.write_text(report(res, args))
    print(f"wrote {args.md} and {args.json}")


def _mean_sd(xs: list[float]) -> str:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return f"{m:.3f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return f"{m:.3f} ± {sd:.3f}"


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    m0, m1 = res["machine_start"], res["machine_end"]
    c, p = res["corpus"], res["prepared"]
    cmd = f"PYTHONPATH=src python bench/bench_llm.py {' '.join(res['argv'])}".rstrip()
    lines = [
        "# Llama + BPE against gpt-bytes at equal bytes of text (issue 13)", "",
        f"Written by `{cmd}` (bench/bench_llm.py; its docstring says what each step does). Raw figures: "
        f"[{args.json.name}]({args.json.name}).", "",
        f"**Machine**: {m0['cpu']}, {m0['cores']} cores shared with other jobs (load average "
        f"{' / '.join(m0['loadavg'] or [])} at the start, {' / '.join(m1['loadavg'] or [])} at the end), no GPU; "
        f"{m0['platform']}, Python {m0['python']}, torch {m0['torch']}, transformers {m0['transformers']}. Every run: "
        f"a real coordinator process and {WORKERS} worker processes (1 torch thread each) on 127.0.0.1, signed "
        f"requests, {CODEC} updates, robust aggregation and audits on (the defaults). Total wall time "
        f"{res['total_wall_s'] / 60:.0f} min. Wall times here depend on the other jobs; the token and byte "
        "counts and the losses do not.", "",
        "## Data", "",
        f"The default corpus (this interpreter's standard library, {c['documents']:,} non-empty .py files) written as "
        f"documents: {c['train_docs']:,} for training ({c['train_bytes']:,} bytes), every {c['heldout_every']}th held out "
        f"({c['heldout_docs']} documents, {c['heldout_bytes']:,} bytes: {', '.join(c['heldout_paths'][:6])}, ...). "
        f"Left out, not UTF-8 (a jsonl/parquet string cannot hold them): "
        f"{', '.join(Path(s).name for s in c['skipped_not_utf8']) or 'none'}.", "",
        "| prepared | from | tokenizer | shards (train) | tokens | train text bytes | bytes/token | wall s |",
        "|---|---|---|---|---|---|---|---|"]
    for key, src, wall in (("bpe-jsonl", "train.jsonl", "bpe_jsonl"), ("bpe-parquet", "train.parquet", "bpe_parquet"),
                           ("bytes", "train.jsonl", "bytes_jsonl")):
        s = p[key]
        tok = f"bpe:{s['vocab_size']} `{s['tokenizer_sha256'][:12]}`" if key != "bytes" else "bytes"
        lines.append(f"| {key} | {src} | {tok} | {s['shards']} ({s['train_shards']}) | {s['ntokens']:,} | "
                     f"{s['train_text_bytes']:,} | {s['bytes_per_token']:.3f} | {res['prepare_wall_s'][wall]:.0f} |")
    eq = res["jsonl_equals_parquet"]
    lines += ["", f"jsonl and parquet give the same BPE tokenizer (sha256 equal: {eq['tokenizer']}) and the same shards "
              f"(root hash equal: {eq['root_hash']}). The BPE is trained on the training documents only.", "",
              "## Models and budgets", "",
              f"Same for both: context {BLOCK} tokens, batch {BATCH}, H = {H} inner AdamW steps per task (lr {LR}, "
              f"warm-up then cosine over the run's budget), quorum {QUORUM}, outer Nesterov 0.7/0.9.", "",
              f"- **llama** (`spec = \"hf\"`, inline `[model.hf]`): {json.dumps(LLAMA)}, vocab "
              f"{p['bpe-jsonl']['vocab_size']} from the tokenizer, untied embeddings: **{res['params']['llama']:,} "
              "parameters**.",
              f"- **gpt-bytes**: {json.dumps(GPT)}, vocab 256, tied embeddings: **{res['params']['gpt-bytes']:,} "
              "parameters**.", "",
              f"The parameter counts differ ({res['params']['llama'] / res['params']['gpt-bytes']:.2f}x): "
              f"{2 * 128 * p['bpe-jsonl']['vocab_size']:,} of the Llama's are its {p['bpe-jsonl']['vocab_size']}-row "
              f"embedding and output matrices (gpt-bytes: {256 * 128:,}, tied); its {BLOCK}-token context covers "
              f"~{BLOCK * p['bpe-jsonl']['bytes_per_token']:.0f} bytes of text against gpt-bytes' {BLOCK}.", "",
              f"Equal bytes of text: the Llama's budget is {res.get('text_bytes', args.text_bytes):,} bytes ÷ "
              f"{p['bpe-jsonl']['bytes_per_token']:.3f} bytes/token (the BPE training shards) = "
              f"{res['budget_tokens_llama']:,} tokens; a run stops at the first version whose accepted tokens reach "
              "its budget, so it overshoots by up to a merge (quorum × task tokens); gpt-bytes of the same seed then "
              "gets, as its token budget, the bytes the Llama run actually saw. The bytes each run saw are in the "
              "table.",
              "", "## Results", "",
              "Held-out = the held-out documents, every token evaluated once (`models.units.evaluate_stream`, "
              f"windows of {BLOCK} tokens); bits/byte = total nats / (ln 2 × UTF-8 bytes of the evaluated targets). "
              "Coordinator val = the run's own held-out windows (its prepared val shards, different text for the two "
              "tokenizations), nats/token, final version.", "",
              "| model | seed | data | bytes of text seen | tokens seen | tasks acc/rej | audits passed/failed | "
              "versions | wall s | worker train s | held-out nats/token | **held-out bits/byte** | "
              "coordinator val nats/token |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        st, ho = r["status"], r["heldout"]
        val = r["val_curve"][-1]["val_loss"] if r["val_curve"] else float("nan")
        lines.append(
            f"| {r['kind']} | {r['seed']} | {Path(r['data']).name} | {r['bytes_seen']:,.0f}"
            f"{' (expectation)' if r['kind'] == 'llama' else ''} | {r['accepted_tokens']:,} | "
            f"{st['updates_accepted']}/{st['updates_rejected']} | {r['audits']['passed']}/{r['audits']['failed']} | "
            f"{st['model_version']} | {r['wall_s']:.0f} | "
            f"{r['worker_train_s']:.0f} | {ho['nats_per_token']:.3f} | **{ho['bits_per_byte']:.3f}** | {val:.3f} |")
    lines += ["", "| model | seeds | held-out bits/byte (mean ± sd) | bytes seen (mean) | params |", "|---|---|---|---|---|"]
    for kind in ("llama", "gpt-bytes"):
        rs = [r for r in res["runs"] if r["kind"] == kind]
        if rs:
            lines.append(f"| {kind} | {len(rs)} | {_mean_sd([r['heldout']['bits_per_byte'] for r in rs])} | "
                         f"{sum(r['bytes_seen'] for r in rs) / len(rs):,.0f} | {res['params'][kind]:,} |")
    ho_l = next((r["heldout"] for r in res["runs"] if r["kind"] == "llama"), None)
    ho_g = next((r["heldout"] for r in res["runs"] if r["kind"] == "gpt-bytes"), None)
    if ho_l and ho_g:
        lines += ["", f"Held-out text: {ho_g['tokens']:,} byte tokens = {ho_l['tokens']:,} BPE tokens (targets). "
                  f"Bytes: {ho_g['bytes']:,} for gpt-bytes, {ho_l['bytes']:,} for the Llama: the same documents; "
                  f"the byte tokenizer's separator between documents is \"\\n\\n\" (2 bytes, {c['heldout_docs']} of "
                  "them), the BPE's <|endoftext|> counts 0 bytes (its loss is counted: a small handicap for the "
                  "Llama)."]
    if res.get("unigram"):
        u = res["unigram"]
        lines += ["", "Reference without a model (`unigram_baseline`): a unigram model, token frequencies counted on the "
                  "prepared training shards (add-0.5 smoothing), on the same held-out targets: "
                  + "; ".join(f"{k} tokens {u[k]['all_train_bits_per_byte']:.3f} bits/byte counted over all training "
                              f"shards, {u[k]['first_shards_bits_per_byte']:.3f} over the first "
                              f"{u[k]['first_shards_text_bytes']:,} bytes of them" for k in ("llama", "gpt-bytes"))
                  + ". A trained model below its tokenization's figure has learned more than token frequencies."]
    lines += ["", "**Measured vs expectation.** Measured here: the held-out losses and bits/byte (every held-out token "
              "evaluated once), the tokens each run trained on (the accepted tasks' records), gpt-bytes' bytes of "
              "text seen (1 byte per token), the coordinator's val losses, wall times, task and audit counts, and the "
              "export check. An expectation: the Llama's bytes of text seen, i.e. its accepted tokens × the "
              "bytes/token of each task's shard (a task's windows are drawn uniformly from its shard, so the bytes "
              "under them equal that on average, not exactly); its token budget is likewise derived from the BPE "
              "shards' mean bytes/token. The comparison is one small configuration at one budget; it says nothing "
              "measured about other sizes or budgets."]
    lines += ["", "## Export check (each Llama run)", "",
              "| seed | `trainnet export` wall s | files | transformers class | same token ids | max abs logit diff "
              f"({SAMPLE_TOKENS} held-out tokens) | allclose 1e-5 |", "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        if r["kind"] == "llama":
            e = r["export"]
            lines.append(f"| {r['seed']} | {e['export_wall_s']:.0f} | {', '.join(e['files'])} | {e['hf_class']} | "
                         f"{e['same_token_ids'] and e['decode_roundtrip']} | {e['max_abs_logit_diff']:.2e} | "
                         f"{e['logits_close_1e-5']} |")
    lines += ["", "## Commands", "", "```"] + [f"{c}" for c in res["commands"]] + [
        "# per run: trainnet coordinator --run RUN.toml --state ... and 2x trainnet worker --coordinator URL "
        "--threads 1 (worker/procs.py LocalCluster)", "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
