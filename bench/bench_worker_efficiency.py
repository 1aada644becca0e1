"""Worker efficiency on CPU: accepted tokens/s of one coordinator + one worker against a plain PyTorch loop.

    PYTHONPATH=src python bench/bench_worker_efficiency.py --out bench/results/worker_efficiency.md
    PYTHONPATH=src python bench/bench_worker_efficiency.py --repeats 1 --seconds 20 --out /tmp/we.md   # quick

Same model and hyperparameters on both sides: the demo's byte GPT (2 layers, 4 heads, 64 wide, context 64),
batch 8, AdamW lr 3e-3 with the task's schedule, grad clip 1, H steps per task, q4 updates, torch threads 1 in
every process. The plain loop is a fresh process that trains the same model on the same corpus without any
task structure. The worker is `trainnet worker` against `trainnet coordinator` on 127.0.0.1 (real processes,
signed requests, durable SQLite state, a merge per update: quorum 1). Modes run interleaved, repeat after
repeat (plain, serial worker, overlapped worker, overlapped worker with the coordinator's held-out evaluation
off), so load from other users of the machine hits all alike.

Measured: plain tokens/s over its timed steps (after 5 warm-up steps); worker accepted tokens/s from its
tasks.jsonl: tokens of the updates accepted after the first, divided by the time between the first and the
last acceptance (so start-up, the first task and the shutdown are excluded; start-up is reported apart: launch
to first accepted update). The breakdown sums each task's measured phases (train / encode / upload / download /
lease / wait) over that window; in overlapped mode encode + upload run beside the next task's training, so
shares can add up to more than 100%. Verification is off (`--verify-rate 0`: the coordinator's audit recompute
would run on the same two cores; its cost is measured in bench/results/security.md); everything else is the
coordinator's default (held-out evaluation of new versions every 2 s included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64}
BATCH, LR, H = 8, 3e-3, 30
SHARD_BYTES, MAX_BYTES = 65536, 4_000_000


def run_toml(path: Path, h: int, max_leases: int) -> Path:
    from trainnet.worker.procs import write_toml

    return write_toml(path, {
        "name": "bench-efficiency",
        "model": MODEL,
        "data": {"shard_bytes": SHARD_BYTES, "val_every": 10, "max_bytes": MAX_BYTES},
        "inner": {"batch_size": BATCH, "lr": LR},
        "consensus": {"h": h, "quorum": 1, "grace_s": 5.0, "lease_s": 60.0, "max_staleness": 8,
                      "max_leases_per_node": max_leases},
        "sim": {"tokens": 10**10, "seed": 0, "codec": "q4", "workers": 1},
    })


# ---------------------------------------------------------------------------------------------- plain loop
def plain_main(seconds: float, h: int) -> None:
    """The plain loop (run in its own process): prints one JSON line with its tokens/s."""
    import torch

    from trainnet.data.corpus import load_corpus
    from trainnet.models import ModelConfig, build_model
    from trainnet.train.local import TaskHParams, make_inner_optimizer, sample_batch

    t_launch = float(os.environ.get("BENCH_LAUNCH", time.time()))
    torch.set_num_threads(1)
    corpus = load_corpus(None, shard_bytes=SHARD_BYTES, val_every=10, max_bytes=MAX_BYTES)
    shards = [corpus.shard(i).tokens for i in corpus.manifest.ids("train")]
    model = build_model(ModelConfig(**MODEL), seed=0)
    hp = TaskHParams(steps=h, lr=LR, batch_size=BATCH, seq_len=MODEL["block_size"])
    opt = make_inner_optimizer(model, hp.lr, hp.weight_decay, hp.beta1, hp.beta2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    startup = time.time() - t_launch
    steps, t0, end, cpu0 = 0, 0.0, None, 0.0
    warm = 5
    while True:
        if steps == warm:
            t0, cpu0 = time.perf_counter(), time.process_time()
            end = t0 + seconds
        elif end is not None and time.perf_counter() >= end:
            break
        tokens = shards[steps % len(shards)]
        x, y = sample_batch(tokens, hp.batch_size, hp.seq_len, gen)
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
        opt.step()
        steps += 1
    dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    timed = steps - warm
    print(json.dumps({"tok_s": timed * BATCH * MODEL["block_size"] / dt, "steps": timed, "seconds": dt,
                      "startup_s": startup, "loss": float(loss), "cpu_s": cpu,
                      "tok_per_cpu_s": timed * BATCH * MODEL["block_size"] / cpu}))


def run_plain(seconds: float, h: int) -> dict[str, Any]:
    from trainnet.worker.procs import child_env

    env = child_env() | {"OMP_NUM_THREADS": "1", "BENCH_LAUNCH": repr(time.time())}
    out = subprocess.run([sys.executable, __file__, "--plain-child", "--seconds", str(seconds), "--h", str(h)],
                         env=env, capture_output=True, text=True, timeout=seconds + 300)
    if out.returncode != 0:
        raise RuntimeError(f"plain loop failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- worker
def run_worker(seconds: float, h: int, overlap: bool, workdir: Path, coordinator_args: tuple[str, ...] = ()
               ) -> dict[str, Any]:
    from trainnet.worker.procs import LocalCluster
    from trainnet.worker.report import read_task_logs

    toml = run_toml(workdir / "run.toml", h, 2 if overlap else 1)
    args = ["--threads", "1"] + ([] if overlap else ["--no-overlap"])
    cl = LocalCluster(workdir, toml, workers=1, worker_args=args, coordinator_args=["--verify-rate", "0", *coordinator_args])
    with cl:
        cl.start_coordinator()
        cl.wait_ready(timeout=300)
        t_launch = time.time()
        cl.start_workers()
        log = cl.worker_dir(0) / "tasks.jsonl"
        pids = [cl.workers[0].proc.pid, cl.coordinator.proc.pid]
        first, cpu = None, {}
        while time.time() - t_launch < 300 + seconds:
            if not cl.workers[0].alive:
                raise RuntimeError(f"worker exited:\n{cl.workers[0].log_tail()}")
            rows = [r for r in read_task_logs(workdir / "workers") if r["accepted"]] if log.exists() else []
            if rows and first is None:
                first, cpu["start"] = rows[0]["time"], (time.time(), cpu_seconds(pids), len(rows))
            if first is not None and rows[-1]["time"] - first >= seconds:
                break
            time.sleep(0.5)
        cpu["end"] = (time.time(), cpu_seconds(pids), len(rows))
        status = cl.status()
    rows = [r for r in read_task_logs(workdir / "workers") if r["accepted"]]
    if len(rows) < 3:
        raise RuntimeError(f"only {len(rows)} accepted updates")
    window = rows[-1]["time"] - rows[0]["time"]
    tokens = sum(r["tokens"] for r in rows[1:])
    phases: dict[str, float] = {}
    for r in rows[1:]:
        for k, v in (r.get("timing") or {}).items():
            key = k[:-2] if k.endswith("_s") else k
            key = "download" if key == "shard" else key  # model versions and shards
            phases[key] = phases.get(key, 0.0) + float(v)
    (ta, ca, na), (tb, cb, nb) = cpu["start"], cpu["end"]
    cpu_tokens = sum(r["tokens"] for r in rows[na:nb])
    worker_cpu, coord_cpu = cb[0] - ca[0], cb[1] - ca[1]
    taus = [int(r["outcome"].split("tau=")[1].split(",")[0]) for r in rows if "tau=" in r["outcome"]]
    return {"tok_s": tokens / window, "window_s": window, "tasks": len(rows) - 1,
            "startup_s": rows[0]["time"] - t_launch - _task_span(rows[0]),
            "first_accept_s": rows[0]["time"] - t_launch, "phases_s": phases,
            "train_tok_s": statistics.median(r["tok_s"] for r in rows[1:]),
            "staleness_mean": statistics.mean(taus) if taus else None,
            "coordinator_accepted": status.get("updates_accepted"), "nodes": status.get("nodes"),
            "cpu_s": {"worker": worker_cpu, "coordinator": coord_cpu, "wall": tb - ta},
            "tok_per_cpu_s": cpu_tokens / max(worker_cpu + coord_cpu, 1e-9)}


def cpu_seconds(pids: list[int]) -> list[float]:
    """User + system CPU seconds of each process and its live children (the coordinator's pool), /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError):
                pass
    out = []
    for pid in pids:
        total = 0.0
        for p in [pid, *children.get(pid, [])]:
            try:
                f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / tick
            except (OSError, IndexError):
                pass
        out.append(total)
    return out


def _task_span(row: dict[str, Any]) -> float:
    t = row.get("timing") or {}
    return float(t.get("train", 0)) + float(t.get("encode_s", 0)) + float(t.get("upload_s", 0))


# ---------------------------------------------------------------------------------------------- report
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} logical CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}; load average at start {os.getloadavg()[0]:.1f} (a machine shared with "
            "other users: every figure is measured under that load)")


MODES = ("plain", "worker-serial", "worker-overlap", "worker-overlap-noeval")
LABELS = {"plain": "plain PyTorch loop", "worker-serial": "worker, serial (max_leases_per_node 1, the default)",
          "worker-overlap": "worker, overlapped (max_leases_per_node 2)",
          "worker-overlap-noeval": "worker, overlapped, coordinator `--eval-interval 3600` (no held-out evaluation)"}
COORDINATOR_ARGS = {"worker-overlap-noeval": ("--eval-interval", "3600")}


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, mach: str, load_end: float) -> str:
    plain = [r["tok_s"] for r in results["plain"]]
    lines = [
        "# Worker efficiency on CPU (issue 13)", "",
        f"Machine: {mach}; load average at the end {load_end:.1f}.", "",
        f"Model: gpt-bytes {MODEL} (the demo's), batch {BATCH} x {MODEL['block_size']}, AdamW lr {LR}, "
        f"H = {args.h} steps per task, codec q4, torch threads 1 per process, coordinator quorum 1 (a merge and "
        f"a new version per update), verification off, default held-out evaluation. {args.repeats} repeats of "
        f"{args.seconds:.0f} s of steady state per mode, interleaved (one run of each mode, then again). "
        "Produced by `bench/bench_worker_efficiency.py`.", "",
        "| mode | accepted tokens/s per repeat | median | vs plain (median of per-repeat ratios) | start-up s "
        "| tokens per CPU-second (all processes) | vs plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        rs = results[mode]
        if not rs:
            continue
        rates = [r["tok_s"] for r in rs]
        ratios = [r["tok_s"] / p for r, p in zip(rs, plain, strict=False)]
        per_cpu = [r["tok_per_cpu_s"] for r in rs]
        cpu_ratios = [r["tok_per_cpu_s"] / p["tok_per_cpu_s"] for r, p in zip(rs, results["plain"], strict=False)]
        lines.append(f"| {LABELS[mode]} | {', '.join(f'{x:,.0f}' for x in rates)} | {statistics.median(rates):,.0f} | "
                     f"{100 * statistics.median(ratios):.1f}% ({', '.join(f'{100 * x:.0f}%' for x in ratios)}) | "
                     f"{statistics.median(r['startup_s'] for r in rs):.1f} | {statistics.median(per_cpu):,.0f} | "
                     f"{100 * statistics.median(cpu_ratios):.1f}% |")
    lines += ["", "Tokens per CPU-second: tokens (accepted, for the worker) divided by the CPU time (user + system, "
              "/proc) of every process of the mode over the window: the plain loop's own; the worker's plus the "
              "coordinator's and its pool's. Unlike tokens/s it does not depend on how much of the shared machine "
              "each process got.", "", "Start-up (excluded above): plain = interpreter launch to its first step; worker = worker launch "
              "to its first accepted update, less that task's own train + encode + upload time (registration, "
              "first model and shard download).", "",
              "## Where the worker's wall time goes (share of the measured window, median over repeats)", "",
              "Critical path: the training thread's phases. Serial mode encodes and uploads on it too; overlapped "
              "mode does both on a background thread while the next task trains. `prefetch` (the newest model "
              "version fetched on a thread during a task's last 20% of steps) is never on the critical path. "
              "`other` = window - critical-path phases (the loop itself, heartbeat threads, the task log).", "",
              "| mode | train | lease | download (model + shard) | wait | encode | upload | other | prefetch "
              "(background) | tasks | training tok/s inside tasks | mean staleness |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in MODES[1:]:
        rs = results[mode]
        if not rs:
            continue

        def share(k: str, rs: list[dict[str, Any]] = rs) -> str:
            return f"{100 * statistics.median(r['phases_s'].get(k, 0.0) / r['window_s'] for r in rs):.1f}%"

        crit = ("train", "lease", "download", "wait") + (("encode", "upload") if mode == "worker-serial" else ())
        other = statistics.median(1 - sum(r["phases_s"].get(k, 0.0) for k in crit) / r["window_s"] for r in rs)
        bg = " (bg)" if mode != "worker-serial" else ""
        stale = [r["staleness_mean"] for r in rs if r["staleness_mean"] is not None]
        lines.append(f"| {LABELS[mode]} | {share('train')} | {share('lease')} | {share('download')} | {share('wait')} "
                     f"| {share('encode')}{bg} | {share('upload')}{bg} | {100 * other:.1f}% | {share('prefetch')} | "
                     f"{statistics.median(r['tasks'] for r in rs):.0f} | "
                     f"{statistics.median(r['train_tok_s'] for r in rs):,.0f} | "
                     f"{statistics.mean(stale) if stale else float('nan'):.2f} |")
    lines += ["", "Raw results (JSON):", "", "```json", json.dumps(results, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/worker_efficiency.md"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=40.0, help="steady-state seconds measured per run")
    ap.add_argument("--h", type=int, default=H)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_child:
        plain_main(args.seconds, args.h)
        return
    mach = machine()
    modes = [m for m in MODES if m in args.modes.split(",")]
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for rep in range(args.repeats):
        for mode in modes:
            t0 = time.time()
            if mode == "plain":
                r = run_plain(args.seconds, args.h)
            else:
                with tempfile.TemporaryDirectory(prefix="bench-we-") as tmp:
                    r = run_worker(args.seconds, args.h, mode != "worker-serial", Path(tmp),
                                   COORDINATOR_ARGS.get(mode, ()))
            r["load"] = os.getloadavg()[0]
            results[mode].append(r)
            print(f"repeat {rep + 1} {mode}: {r['tok_s']:,.0f} tok/s ({time.time() - t0:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(results, args, mach, os.getloadavg()[0]))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
