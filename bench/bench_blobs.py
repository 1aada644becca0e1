"""Blob store throughput: put_stream and get_range MB/s for the filesystem backend and for S3BlobStore
against a local moto server (an emulator on loopback, not a real S3: its numbers bound the client's overhead,
they say nothing about AWS, R2 or MinIO).

    PYTHONPATH=src python bench/bench_blobs.py --mib 64 --repeats 3 --out bench/results/blobs.md

put_stream: one blob of --mib MiB in 1 MiB chunks (durable on return: fsync + rename on fs, multipart upload
in 8 MiB parts on S3), median of --repeats. get_range: --reads reads at random offsets for each --range-kib
size, median over repeats. The fs reads come from the page cache (the blob was just written), so they
measure the store's overhead, not the disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from simrunner import cpu_model  # noqa: E402  (bench/ is the script directory)

from trainnet.devservers.s3 import moto_s3_server  # noqa: E402
from trainnet.store.blob_fs import FsBlobStore  # noqa: E402
from trainnet.store.blobs import BlobStore  # noqa: E402

CHUNK = 1 << 20


def chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for pos in range(0, len(data), CHUNK):
        yield view[pos:pos + CHUNK]


def bench_store(store: BlobStore, data: bytes, repeats: int, range_kib: list[int],
                reads: int) -> dict[str, list[float]]:
    """MB/s of each repeat, per measurement."""
    mb = len(data) / 1e6
    put_rates = []
    for i in range(repeats):
        t0 = time.perf_counter()
        size, _ = store.put_stream(f"bench/blob{i}", chunks(data), max_bytes=len(data))
        put_rates.append(mb / (time.perf_counter() - t0))
        assert size == len(data)
    row = {"put_stream": put_rates}
    rng = random.Random(0)
    for kib in range_kib:
        n = kib * 1024
        rates = []
        for _ in range(repeats):
            offsets = [rng.randrange(0, len(data) - n) for _ in range(reads)]
            t0 = time.perf_counter()
            for off in offsets:
                assert len(store.get_range("bench/blob0", off, n)) == n
            rates.append(reads * n / 1e6 / (time.perf_counter() - t0))
        row[f"get_range {kib} KiB"] = rates
    for i in range(repeats):
        store.delete(f"bench/blob{i}")
    return row


def fs_type(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[1].split()[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--range-kib", type=int, nargs="+", default=[64, 4096])
    ap.add_argument("--reads", type=int, default=32)
    ap.add_argument("--dir", type=Path, default=None, help="where the fs store lives (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/blobs.md")
    args = ap.parse_args()

    data = random.Random(1).randbytes(args.mib << 20)
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-blobs-") as tmp:
        where = fs_type(Path(tmp))
        rows[f"fs ({where}, fsync on put)"] = bench_store(FsBlobStore(Path(tmp)), data, args.repeats,
                                                         args.range_kib, args.reads)
    import boto3

    from trainnet.store.blob_s3 import S3BlobStore

    with moto_s3_server() as server:
        admin = boto3.client("s3", **server.client_kwargs())
        admin.create_bucket(Bucket="bench")
        store = S3BlobStore("bench", "run", endpoint_url=server.endpoint_url, region="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")
        rows["s3 via moto (local emulator, loopback)"] = bench_store(store, data, args.repeats, args.range_kib,
                                                                     args.reads)
        store.close()
        admin.close()

    import moto

    cols = list(next(iter(rows.values())))
    lines = [
        "# Blob store throughput",
        "",
        f"Command: `PYTHONPATH=src python bench/bench_blobs.py --mib {args.mib} --repeats {args.repeats} "
        f"--range-kib {' '.join(map(str, args.range_kib))} --reads {args.reads}`",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical cores (shared with other work; the moto server runs "
        f"on the same cores as the client). Python {platform.python_version()}, boto3 {boto3.__version__}, "
        f"moto {moto.__version__}.",
        "",
        f"Setup: one {args.mib} MiB random blob streamed in 1 MiB chunks (median of {args.repeats} puts); "
        f"{args.reads} range reads at random offsets per size (median of {args.repeats} rounds). Cells: median "
        "MB/s (min-max over the repeats; MB = 10^6 bytes).",
        "",
        "| backend | " + " | ".join(f"{c} MB/s" for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(row[c]) for c in cols) + " |")
    lines += [
        "",
        "moto is a Python emulator of the S3 API running on this machine: these rows measure the S3 client path "
        "(boto3, SigV4 signing, HTTP on loopback, multipart in 8 MiB parts) plus the emulator's own cost, not "
        "the throughput of AWS S3, Cloudflare R2 or MinIO. moto 5 materializes the whole object for every "
        "range request and then slices it (moto/s3/responses.py, _handle_range_header), so its get_range "
        f"rows mostly measure a {args.mib} MiB copy per request; real stores serve ranges without that. "
        "The fs reads are served from the page cache.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


def _cell(rates: list[float]) -> str:
    return f"{statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f})"


if __name__ == "__main__":
    main()
