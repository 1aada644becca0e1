"""Shared helpers for the simulator benchmarks: run `trainnet simulate` variants x seeds as separate
processes (one torch thread each, a few at a time) and summarize their JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line(jobs: int) -> str:
    import torch

    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, one torch thread per run, "
            f"{jobs} runs at a time.")


def run_variants(config: str, variants: dict[str, list[str]], seeds: list[int], out: Path, jobs: int,
                 extra: list[str], reuse: bool = False) -> dict[str, list[dict]]:
    """Run every variant for every seed; returns variant -> [result per seed]."""
    out.mkdir(parents=True, exist_ok=True)

    def one(job: tuple[str, int]) -> tuple[str, dict]:
        name, seed = job
        path = out / f"{name}_s{seed}.json"
        if not (reuse and path.exists()):
            cmd = [sys.executable, "-m", "trainnet.cli", "simulate", "--config", config, "--quiet", "--json",
                   str(path), "--set", f"sim.seed={seed}", "--set", "sim.threads=1", *variants[name], *extra]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return name, json.loads(path.read_text())

    jobs_list = [(v, s) for s in seeds for v in variants]
    by: dict[str, list[dict]] = {v: [] for v in variants}
    with ThreadPoolExecutor(jobs) as pool:
        for name, result in pool.map(one, jobs_list):
            by[name].append(result)
    return by


def mean_of(rs: list[dict], key: str | Callable[[dict], float]) -> float:
    get = key if callable(key) else (lambda r: r[key])
    return statistics.mean(get(r) for r in rs)


def curve_line(r: dict, points: int = 8) -> str:
    pts = r["curve"]
    step = max(1, len(pts) // points)
    shown = pts[::step] + ([pts[-1]] if (len(pts) - 1) % step else [])
    return ", ".join(f"{p['tokens'] / 1e6:.2f}M→{p['val_loss']:.3f}" for p in shown)
