"""A real S3-speaking HTTP server for tests: moto's standalone server in a subprocess on 127.0.0.1.

    with moto_s3_server() as s3:                  # starts it on a free port, waits until it answers
        client = boto3.client("s3", **s3.client_kwargs())
        monkeypatch.setenv(...) for k, v in s3.env().items()   # or hand the AWS_* variables to a subprocess

moto is a local emulator, not AWS: it speaks the S3 REST API (multipart, ranges, presigned URLs) but does
not check signatures, so tests about what a real store enforces (signed Content-Length) must check the URL.
The server keeps state for its lifetime; give each test its own bucket. Readiness and shutdown loops are
bounded, so a server that cannot start fails the test with its log instead of hanging.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    port: int
    log: Path

    def env(self) -> dict[str, str]:
        """AWS_* variables that point boto3 (and TrainNet's S3BlobStore.from_url) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for boto3.client("s3", ...) talking to this server."""
        return {"endpoint_url": self.endpoint_url, "region_name": REGION,
                "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


@contextmanager
def moto_s3_server(start_timeout_s: float = 30.0) -> Iterator[S3Server]:
    """Start `python -m moto.server` on 127.0.0.1 and a free port; stop it on exit. Retries a port taken by
    someone else between choosing and binding it (up to 3 ports)."""
    with tempfile.TemporaryDirectory(prefix="moto-s3-") as tmp:
        log = Path(tmp) / "moto.log"
        # no credentials or profiles of the machine leak into the server
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION)
        for _attempt in range(3):
            port = free_port()
            with open(log, "wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                        stdout=out, stderr=subprocess.STDOUT, env=env)
            try:
                deadline = time.monotonic() + start_timeout_s
                while proc.poll() is None and time.monotonic() < deadline and not _answers(port):
                    time.sleep(0.05)
                if proc.poll() is None and _answers(port):
                    yield S3Server(f"http://127.0.0.1:{port}", port, log)
                    return
                if proc.poll() is None:
                    raise RuntimeError(f"moto S3 server did not answer on port {port} within {start_timeout_s} s; "
                                       f"log:\n{log.read_text(errors='replace')[-2000:]}")
                if "in use" not in log.read_text(errors="replace"):
                    raise RuntimeError(f"moto S3 server exited with {proc.returncode}; "
                                       f"log:\n{log.read_text(errors='replace')[-2000:]}")
            finally:
                _stop(proc)
        raise RuntimeError(f"moto S3 server could not bind a free port in 3 tries; log:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
