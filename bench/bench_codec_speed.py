"""Quantizing codecs against a memory copy: encode/decode throughput as a share of copy bandwidth, one thread.

    PYTHONPATH=src python bench/bench_codec_speed.py                    # 16M elements, 7 repetitions
    PYTHONPATH=src python bench/bench_codec_speed.py --numel 67108864 --repeats 5 --codecs q2,q4

One run, one thread (torch.set_num_threads(1)), one seeded float32 tensor (Gaussian, std 1e-3). Each repetition
times, back to back: a numpy copy of the tensor's array into a preallocated array, then every codec's
`encode` and `decode` (decode validates, as the wire decoder does), so machine noise hits all of them alike.
Reported: medians over the repetitions.

Units. Copy bandwidth counts bytes read + bytes written (2 x 4 bytes per element), the usual convention for a
memory copy. Codec throughput counts float32 input bytes (4 per element) per second, so 100% would mean a
codec that handles the tensor in the time a copy reads it and writes it again. A copy into a freshly
allocated array is timed too, for context: decode must return a new tensor, and a fresh allocation's page
faults are part of its time.

Writes (or replaces) the section starting at SECTION in bench/results/codecs_speed.md; bench_codecs.py keeps it
when it rewrites the rest of that file. Its table rows deliberately do not start with a `code` cell, which
bench_codec_loss.py reads as rows of the main table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from simrunner import cpu_model  # bench/ is the script directory

from trainnet.codec import parse_codec
from trainnet.codec.codecs import DENSE_DEFAULT_BLOCK

try:
    from trainnet.codec.blocked import dequantize_blocked
except ImportError:  # trainnet before the blocked kernels (e.g. to time an older checkout): no kernel column
    dequantize_blocked = None

SECTION = "## Against a single-threaded memory copy"
CODECS = ["int8", "q4", "q2", "int8:sr", "q4:sr", "q2:sr"]


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds) of one call: the second leaves out time-slices other jobs
    took from us, though not their sharing of caches and memory bandwidth."""
    t, c = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - t, time.thread_time() - c


def _kernel_decode(spec: str, enc, out: torch.Tensor):
    """The blocked decode kernel alone, into a reused output: no validation, no fresh allocation."""
    vc = parse_codec(spec).values
    block = vc._block(DENSE_DEFAULT_BLOCK)
    p = enc.parts
    return lambda: dequantize_blocked(p["q"], p["scale"], p["offset"], out.numel(), block, vc.bits, out=out)


def measure(numel: int, specs: list[str], repeats: int, seed: int = 0) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds per repetition for 'copy', 'fresh copy' and '<spec> enc' / 'dec' / 'kernel'."""
    x = torch.randn(numel, generator=torch.Generator().manual_seed(seed)) * 1e-3
    a = x.numpy()
    dst = np.empty_like(a)
    dst[:] = 0.0  # fault the destination in before timing
    out = torch.zeros(numel)
    codecs = {s: parse_codec(s) for s in specs}
    encoded = {s: c.encode(x) for s, c in codecs.items()}  # warm-up (and the decode inputs)
    kernels = {s: _kernel_decode(s, encoded[s], out) for s in specs} if dequantize_blocked else {}
    for s, c in codecs.items():
        y = c.decode(encoded[s])
        assert s not in kernels or torch.equal(y, kernels[s]())
    times: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeats):
        times.setdefault("copy", []).append(_timed(lambda: np.copyto(dst, a)))
        times.setdefault("fresh copy", []).append(_timed(lambda: a.copy()))
        for s, c in codecs.items():
            times.setdefault(f"{s} enc", []).append(_timed(lambda: c.encode(x)))  # noqa: B023
            times.setdefault(f"{s} dec", []).append(_timed(lambda: c.decode(encoded[s])))  # noqa: B023
            if s in kernels:
                times.setdefault(f"{s} kernel", []).append(_timed(kernels[s]))
    return times


def _rows(numel: int, specs: list[str], med: dict[str, float]) -> list[str]:
    copy_bw = 8 * numel / med["copy"]  # bytes read + written per second
    rows = []
    for spec in specs:
        cells = []
        for k in ("enc", "dec", "kernel"):
            bw = 4 * numel / med[f"{spec} {k}"] if f"{spec} {k}" in med else None
            cells.append(f"{bw / 1e9:.2f} | {100 * bw / copy_bw:.0f}%" if bw else "n/a | n/a")
        name = parse_codec(spec).spec + (" (stochastic)" if ":sr" in spec else " (nearest)")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def section(numel: int, specs: list[str], repeats: int, times: dict[str, list[tuple[float, float]]], cmd: str,
            load: tuple[float, float]) -> str:
    """The markdown section: header lines, the wall-clock table and the same from CPU time."""
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    copies = [8 * numel / w / 1e9 for w, _ in times["copy"]]
    head = "| codec (rounding) | encode GB/s | % of copy | decode GB/s | % of copy | decode kernel GB/s | % of copy |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    lines = [
        SECTION, "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {np.__version__}; 1 torch thread",
        f"- Command: `{cmd}`",
        f"- Data: one float32 tensor of {numel:,} elements ({4 * numel / 2**20:.0f} MiB), Gaussian std 1e-3, seed 0.",
        f"- Copy: `np.copyto` into a preallocated array, {8 * numel / wall['copy'] / 1e9:.1f} GB/s read + write "
        f"(median of {repeats}; range {min(copies):.1f}-{max(copies):.1f} GB/s). Into a fresh array (`a.copy()`, "
        f"page faults included): {8 * numel / wall['fresh copy'] / 1e9:.1f} GB/s.",
        "- Codec GB/s: float32 input bytes per second (4 per element); % of copy = that / the copy's read + write "
        "bandwidth, so 50% means the codec takes as long as the copy. Decode includes validation and allocating "
        "its output; the decode kernel is `codec.blocked.dequantize_blocked` alone, writing into one reused "
        "output (what decode would cost if its caller recycled output buffers).",
        f"- Load: 1-minute load average {load[0]:.1f} before and {load[1]:.1f} after. The 2 cores are shared with "
        "other jobs, so figures move by tens of percent between runs; every repetition times the copy and the "
        "codecs back to back, and the table gives medians.",
        "",
        head, rule, *_rows(numel, specs, wall), "",
        "The same from this thread's CPU time (medians; leaves out time-slices taken by other jobs, not their "
        f"use of the shared caches; copy {8 * numel / cpu['copy'] / 1e9:.1f} GB/s read + write):", "",
        head, rule, *_rows(numel, specs, cpu),
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace this script's section of `path` (or append it), keeping everything before it."""
    old = path.read_text() if path.exists() else ""
    head = old.split(SECTION)[0].rstrip("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((head + "\n\n" if head else "") + text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=16 * 2**20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--out", default="bench/results/codecs_speed.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    specs = args.codecs.split(",")
    load_before = os.getloadavg()[0]
    times = measure(args.numel, specs, args.repeats)
    load_after = os.getloadavg()[0]
    cmd = "PYTHONPATH=src python " + " ".join(["bench/bench_codec_speed.py", *sys.argv[1:]])
    text = section(args.numel, specs, args.repeats, times, cmd, (load_before, load_after))
    print(text)
    write_section(Path(args.out), text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
