"""Codecs x H at equal tokens on the standard simulator run: loss, bytes, reduction vs fp32 DDP.

    python bench/bench_codec_loss.py            # writes bench/results/codecs.md
    python bench/bench_codec_loss.py --seeds 0 --variants q2_h100 fp32_h100   # a quick look

Each row is `trainnet simulate --config bench/standard.toml --codec SPEC --set consensus.h=H [faults]`, one
process per (variant, seed). fp32 at H=100 is exactly the foundation benchmark's fault-free run: its JSON is
reused from bench/results/runs/foundation/ when present. Encode/decode speeds are copied from
bench/results/codecs_speed.md (bench/bench_codecs.py, 10M parameters).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from simrunner import machine_line, mean_of, run_variants

HERE = Path(__file__).resolve().parent
FAULTS = ["--dropout", "0.3", "--set", "sim.speed_sigma=0.3", "--set", "sim.slow_fraction=0.25",
          "--set", "sim.lag_s=2.0"]
DEFAULT = "q2_h100"


def variant(codec: str, h: int, faults: bool = False) -> list[str]:
    return ["--codec", codec, "--set", f"consensus.h={h}", *(FAULTS if faults else [])]


VARIANTS = {
    "fp32_h100": variant("fp32", 100),
    "q2_h100": variant("q2", 100),
    "q2_h100_faults": variant("q2", 100, faults=True),
    "int8_h100": variant("int8", 100),
    "q4_h100": variant("q4", 100),
    "topk_q2_h100": variant("topk:0.015+q2", 100),
    "dct_sign_h100": variant("dct64:top4+sign", 100),
    "fp32_h30": variant("fp32", 30),
    "topk_q2_h30": variant("topk:0.015+q2", 30),
}
FAULTY = {"q2_h100_faults"}


def _rel(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(HERE.parent)) if p.is_relative_to(HERE.parent) else p.name


def speeds() -> dict[str, tuple[str, str, str]]:
    """codec spec -> (encode MB/s, decode MB/s, wire bits/param), single thread, from the speed table."""
    out: dict[str, tuple[str, str, str]] = {}
    path = HERE / "results" / "codecs_speed.md"
    if path.exists():
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) > 3 and cells[0].startswith("`"):
                out[cells[0].split("`")[1]] = (cells[1], cells[2], cells[5])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(HERE / "standard.toml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--one-seed", nargs="*", default=[],
                    help="variants to run on the first seed only (to save time on 2 cores)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "runs" / "codecs"))
    ap.add_argument("--table", default=str(HERE / "results" / "codecs.md"))
    args = ap.parse_args()
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = HERE / "results" / "runs" / "foundation"
    for s in args.seeds:  # the foundation's fault-free run is fp32 at H=100 on the same config
        if (found / f"async_s{s}.json").exists() and not (out / f"fp32_h100_s{s}.json").exists():
            shutil.copy(found / f"async_s{s}.json", out / f"fp32_h100_s{s}.json")
    many = [v for v in args.variants if v not in args.one_seed]
    few = [v for v in args.variants if v in args.one_seed]
    by = run_variants(args.config, {v: VARIANTS[v] for v in many}, args.seeds, out, args.jobs, [], reuse=True)
    by |= run_variants(args.config, {v: VARIANTS[v] for v in few}, args.seeds[:1], out, args.jobs, [], reuse=True)
    sync = {json.loads(p.read_text())["config"]["sim"]["seed"]: json.loads(p.read_text())["final_val_loss"]
            for p in sorted(found.glob("sync_s*.json"))}
    speed = speeds()
    lines = [
        "# Codecs x H at equal tokens (standard simulator run)",
        "",
        f"Command: `python bench/bench_codec_loss.py {' '.join(sys.argv[1:])}`".replace(" `", "`") + "  ",
        f"Config: `bench/{Path(args.config).name}` (8 workers, 2.5M accepted tokens, warm start 20% sent in fp32, "
        f"error feedback on every worker); seeds {args.seeds}"
        + (f" (rows marked * ran seed {args.seeds[0]} only)" if few else "") + ".  ",
        machine_line(args.jobs) + (f" Whole benchmark: {(time.time() - t0) / 60:.1f} min." if time.time() - t0 > 60
                                   else f" Table assembled from the stored per-run JSON in {_rel(args.out)}."),
        "",
        "Bytes per worker are the measured lengths of the encoded updates (wire format, header included), the "
        "warm start's fp32 upload included. Reduction = fp32 DDP bytes for the same tokens / bytes uploaded. "
        "Codec bits/param (one upload per H local steps), encode and decode speeds: single thread, 10M "
        "parameters, from [codecs_speed.md](codecs_speed.md). vs sync: against the foundation table's "
        "synchronous baseline on the same seeds.",
        "",
        "| codec | H | codec bits/param per upload | val loss per seed | mean | vs fp32 same H | vs sync "
        "| up per worker | reduction vs fp32 DDP | enc MB/s | dec MB/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in args.variants:
        rs = by.get(v) or []
        if not rs:
            continue
        cfg = rs[0]["config"]
        codec, h = cfg["sim"]["codec"], cfg["consensus"]["h"]
        ref = by.get(f"fp32_h{h}")
        m = mean_of(rs, "final_val_loss")
        seeds = [r["config"]["sim"]["seed"] for r in rs]
        vs_sync = ""
        if all(sd in sync for sd in seeds):  # same seeds: the sync loss varies by seed as much as the gaps
            vs_sync = f"{100 * (m / (sum(sync[sd] for sd in seeds) / len(seeds)) - 1):+.1f}%"
        vs_ref = ""
        if ref and not v.startswith("fp32"):
            n = min(len(rs), len(ref))
            r_mean = mean_of(ref[:n], "final_val_loss")
            vs_ref = f"{100 * (mean_of(rs[:n], 'final_val_loss') / r_mean - 1):+.2f}%"
        label = f"`{codec}`" + (" (default)" if v == DEFAULT else "") + (" + 30% dropout, slow tail" if v in FAULTY else "")
        label += "*" if v in few else ""
        enc, dec, bits = speed.get(codec, ("", "", ""))
        per_seed = ", ".join(f"{r['final_val_loss']:.4f}" for r in rs)
        lines.append(
            f"| {label} | {h} | {bits} | {per_seed} | {m:.4f} | {vs_ref} | "
            f"{vs_sync} | "
            f"{mean_of(rs, 'bytes_up_per_worker') / 1e6:.3f} MB | {mean_of(rs, 'bytes_reduction_vs_ddp'):,.0f}x | "
            f"{enc} | {dec} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.table).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
