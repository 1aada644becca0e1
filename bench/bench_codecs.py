"""Micro-benchmark of the update codecs: speed, bits per parameter and reconstruction error.

    PYTHONPATH=src python bench/bench_codecs.py                 # writes bench/results/codecs_speed.md
    PYTHONPATH=src python bench/bench_codecs.py --repeats 5 --codecs q4,topk:0.015+q2

The file's last section (quantizing codecs as a share of a memory copy's bandwidth) is written by
bench/bench_codec_speed.py and kept as it is here.

Data: a ~10.5M-parameter dict of realistic transformer shapes filled with Gaussian noise (std 1e-3, seeded).
Noise has no spatial structure, which is the worst case for the DCT codecs; real pseudo-gradients are
smoother, so their DCT errors here are pessimistic. Speeds are MB/s of float32 parameters (4 bytes/param),
median over repeats, with 1 thread and with torch's default thread count.
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

import torch
from bench_codec_speed import SECTION as COPY_SECTION  # bench/ is the script directory
from simrunner import cpu_model

from trainnet.codec import parse_codec
from trainnet.protocol.wire import decode_update, encode_update

CODECS = ["fp32", "fp16", "bf16", "int8", "q4", "q2", "q4:sr", "sign", "topk:0.015", "topk:0.015+q4",
          "topk:0.015+q2", "dct64:top4", "dct64:top4+sign"]


def make_params(seed: int = 0) -> dict[str, torch.Tensor]:
    """~10.5M parameters: an embedding and two transformer blocks (d_model 512, MLP 2048)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"tok_emb.weight": (8192, 512)}
    for i in range(2):
        shapes |= {f"blocks.{i}.attn.qkv.weight": (1536, 512), f"blocks.{i}.attn.proj.weight": (512, 512),
                   f"blocks.{i}.mlp.fc.weight": (2048, 512), f"blocks.{i}.mlp.proj.weight": (512, 2048),
                   f"blocks.{i}.ln1.weight": (512,), f"blocks.{i}.ln2.weight": (512,)}
    return {k: torch.randn(s, generator=g) * 1e-3 for k, s in shapes.items()}


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_codec(spec: str, params: dict[str, torch.Tensor], repeats: int, threads: list[int]) -> dict:
    codec = parse_codec(spec)
    numel = sum(v.numel() for v in params.values())
    mb = 4 * numel / 1e6
    row: dict = {"spec": codec.spec}
    for n in threads:
        torch.set_num_threads(n)
        encoded = {k: codec.encode(v) for k, v in params.items()}  # warm-up
        enc_s = timed(lambda: {k: codec.encode(v) for k, v in params.items()}, repeats)  # noqa: B023
        dec_s = timed(lambda: {k: codec.decode(e) for k, e in encoded.items()}, repeats)  # noqa: B023
        row[f"enc{n}"], row[f"dec{n}"] = mb / enc_s, mb / dec_s
    decoded = {k: codec.decode(e) for k, e in encoded.items()}
    err = sum(float((decoded[k] - v).double().pow(2).sum()) for k, v in params.items()) ** 0.5
    ref = sum(float(v.double().pow(2).sum()) for v in params.values()) ** 0.5
    payload = sum(e.nbytes for e in encoded.values())
    message = encode_update(encoded, codec.spec)
    assert set(decode_update(message).tensors) == set(params)
    row |= {"payload_bits": 8 * payload / numel, "wire_bits": 8 * len(message) / numel, "rel_err": err / ref}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--out", default="bench/results/codecs_speed.md")
    ap.add_argument("--default", default="topk:0.015+q2",
                    help="codec whose row is labelled (default): the proposed project default")
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    threads = [1] if default_threads == 1 else [1, default_threads]
    load_before = os.getloadavg()[0]
    params = make_params()
    numel = sum(v.numel() for v in params.values())
    rows = []
    for spec in args.codecs.split(","):
        rows.append(bench_codec(spec, params, args.repeats, threads))
        r = rows[-1]
        print(f"{r['spec']:>18}  enc1 {r['enc1']:8.1f} MB/s  dec1 {r['dec1']:8.1f} MB/s  "
              f"bits {r['wire_bits']:.4f}  rel_err {r['rel_err']:.4f}", flush=True)
    torch.set_num_threads(default_threads)
    load_after = os.getloadavg()[0]
    cmd = "PYTHONPATH=src python " + " ".join(["bench/bench_codecs.py", *sys.argv[1:]])
    tcols = " | ".join(f"enc MB/s ({n}t) | dec MB/s ({n}t)" for n in threads)
    lines = [
        "# Codec speed, size and error (measured)", "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {cpu_model()}, {torch.get_num_threads()} torch threads by default "
        f"({os.cpu_count()} logical CPUs visible), "
        f"Python {platform.python_version()}, torch {torch.__version__}",
        f"- Command: `{cmd}`",
        f"- Data: {numel:,} float32 parameters in {len(params)} tensors (embedding 8192x512 + two d512 blocks), "
        "Gaussian noise std 1e-3, seed 0 (worst case for DCT codecs).",
        "- (default) marks the proposed default codec (`--default`); the relative errors are for one round "
        "without error feedback, which carries what a round drops into the next one.",
        f"- Speed: MB of float32 parameters per second, median of {args.repeats} runs over the whole dict; "
        "decode includes validation. Bits/param: payload = packed parts only; wire = whole encode_update "
        "message incl. JSON header. x vs DDP: 32 bits x H=30 local steps / wire bits (fp32 DDP sends 32 "
        "bits/param every step; one round of H=30 steps sends this codec once).",
        f"- Load: 1-minute load average {load_before:.1f} before and {load_after:.1f} after the run (other jobs "
        "share the CPUs). With load above the core count the multi-thread columns mostly measure contention "
        "(torch's worker threads wait for busy cores), so compare codecs within the 1-thread columns.",
        "- `fp32` encode and decode are a finiteness check plus one copy.",
        "",
        f"| codec | {tcols} | wire bits/param | payload bits/param | x vs fp32 DDP (H=30) | rel. L2 error |",
        "|---|" + "---:|" * (2 * len(threads) + 4),
    ]
    for r in rows:
        speeds = " | ".join(f"{r[f'enc{n}']:.0f} | {r[f'dec{n}']:.0f}" for n in threads)
        label = f"`{r['spec']}`" + (" (default)" if r["spec"] == parse_codec(args.default).spec else "")
        lines.append(f"| {label} | {speeds} | {r['wire_bits']:.4f} | {r['payload_bits']:.4f} | "
                     f"{32 * 30 / r['wire_bits']:,.0f} | {r['rel_err']:.4f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Keep the copy-relative section that bench_codec_speed.py writes into the same file.
    kept = out.read_text().split(COPY_SECTION, 1) if out.exists() else [""]
    out.write_text("\n".join(lines) + "\n" + (f"\n{COPY_SECTION}{kept[1]}" if len(kept) > 1 else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
