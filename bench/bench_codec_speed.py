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


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _kernel_decode(spec: str, enc, out: torch.Tensor):
    """The blocked decode kernel alone, into a reused output: no validation, no fresh allocation."""
    vc = parse_codec(spec).values
    block = vc._block(DENSE_DEFAULT_BLOCK)
    p = enc.parts
    return lambda: dequantize_blocked(p["q"], p["scale"], p["offset"], out.numel(), block, vc.bits, out=out)


def measure(numel: int, specs: list[str], repeats: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per repetition for 'copy', 'fresh copy' and '<spec> enc' / 'dec' / 'kernel' of every spec."""
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
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        times.setdefault("copy", []).append(_timed(lambda: np.copyto(dst, a)))
        times.setdefault("fresh copy", []).append(_timed(lambda: a.copy()))
        for s, c in codecs.items():
            times.setdefault(f"{s} enc", []).append(_timed(lambda: c.encode(x)))  # noqa: B023
            times.setdefault(f"{s} dec", []).append(_timed(lambda: c.decode(encoded[s])))  # noqa: B023
            if s in kernels:
                times.setdefault(f"{s} kernel", []).append(_timed(kernels[s]))
    return times


def section(numel: int, specs: list[str], repeats: int, times: dict[str, list[float]], cmd: str,
            load: tuple[float, float]) -> str:
    """The markdown section: header lines and one row per codec."""
    med = {k: statistics.median(v) for k, v in times.items()}
    copy_bw = 8 * numel / med["copy"]  # bytes read + written per second
    fresh_bw = 8 * numel / med["fresh copy"]
    spread = f"{8 * numel / max(times['copy']) / 1e9:.1f}-{8 * numel / min(times['copy']) / 1e9:.1f}"
    lines = [
        SECTION, "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {np.__version__}; 1 torch thread",
        f"- Command: `{cmd}`",
        f"- Data: one float32 tensor of {numel:,} elements ({4 * numel / 2**20:.0f} MiB), Gaussian std 1e-3, seed 0.",
        f"- Copy: `np.copyto` into a preallocated array, {copy_bw / 1e9:.1f} GB/s read + write (median of {repeats}; "
        f"range {spread} GB/s). Into a fresh array (`a.copy()`, page faults included): {fresh_bw / 1e9:.1f} GB/s.",
        "- Codec GB/s: float32 input bytes per second (4 per element); % = that / copy bandwidth (read + write), "
        "so 50% means the codec takes as long as the copy. Decode includes validation and allocating its "
        "output. Medians of the repetitions, each timing copy, encodes and decodes back to back.",
        f"- Load: 1-minute load average {load[0]:.1f} before and {load[1]:.1f} after (the 2 cores are shared with "
        "other jobs, so single figures move by tens of percent between runs; the copy is timed in the same "
        "repetitions to keep the ratio honest).",
        "",
        "- Decode kernel: `codec.blocked.dequantize_blocked` alone, writing into one reused output tensor (no "
        "validation, no fresh allocation): what decode would cost if its caller recycled output buffers.",
        "",
        "| codec (rounding) | encode GB/s | encode % of copy | decode GB/s | decode % of copy "
        "| decode kernel GB/s | kernel % of copy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in specs:
        cells = []
        for k in ("enc", "dec", "kernel"):
            bw = 4 * numel / med[f"{s} {k}"] if f"{s} {k}" in med else None
            cells.append(f"{bw / 1e9:.2f} | {100 * bw / copy_bw:.0f}%" if bw else "n/a | n/a")
        name = parse_codec(s).spec + (" (stochastic)" if ":sr" in s else " (nearest)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
