"""A `trainnet coordinator` subprocess on loopback for load tests: a tiny run config, start / kill / stop,
the operator token, and the process's RSS and CPU time from /proc.

    run = write_run(tmp, lease_s=60.0)
    c = CoordinatorProc(run, port, db="sqlite:///tmp/x/coordinator.db", blobs=str(tmp / "blobs"), log=tmp / "c.log")
    c.wait_ready(); c.operator_token(); c.proc_stats(); c.kill(); c.stop()
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]

# A 1-layer GPT (~35k parameters), q2 uploads: a request's control-plane cost, not its bytes, is measured.
RUN_TOML = """
name = "loadbench"
[model]
n_layer = 1
n_head = 2
n_embd = 32
block_size = 32
[data]
shard_bytes = 32768
val_every = 8
max_bytes = 1048576
[inner]
batch_size = 4
[consensus]
h = 50
quorum = {quorum}
grace_s = {grace_s}
lease_s = {lease_s}
max_staleness = 8
[sim]
tokens = {tokens}
codec = "q2"
eval_batches = 2
eval_batch_size = 8
[aggregate]
merge_lease_s = {merge_lease_s}
"""

FAST_FLAGS = ["--register-per-ip", "0", "--ip-rate", "0", "--rate", "0", "--verify-rate", "0"]


def write_run(folder: Path, lease_s: float = 60.0, grace_s: float = 30.0, quorum: int = 4,
              tokens: int = 10**15, merge_lease_s: float = 300.0) -> Path:
    """A run config whose token budget is not reached during a benchmark (10**15 tokens by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.toml"
    path.write_text(RUN_TOML.format(lease_s=lease_s, grace_s=grace_s, quorum=quorum, tokens=tokens,
                                    merge_lease_s=merge_lease_s))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CoordinatorProc:
    """`python -m trainnet.cli coordinator` with the given stores; output goes to `log`."""

    def __init__(self, run: Path, port: int, db: str, blobs: str, log: Path, extra: list[str] | None = None,
                 log_level: str = "warning", switch_interval_s: float | None = None) -> None:
        self.port, self.url, self.log_path, self.db = port, f"http://127.0.0.1:{port}", log, db
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
        self._log = open(log, "ab")
        # A diagnostic: the interpreter's GIL switch interval (default 5 ms), set before the CLI runs.
        launcher = ["-m", "trainnet.cli"] if switch_interval_s is None else [
            "-c", f"import sys; sys.setswitchinterval({switch_interval_s!r}); sys.argv[0] = 'trainnet'; "
                  "from trainnet.cli import main; main()"]
        cmd = [sys.executable, *launcher, "coordinator", "--run", str(run), "--db", db, "--blobs", blobs,
               "--port", str(port), "--log-level", log_level, *FAST_FLAGS, *(extra or [])]
        self.command = cmd
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """GET /v1/info until it answers; raises if the process exits or the time runs out."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.proc.returncode}; see {self.log_path}")
            try:
                r = httpx.get(self.url + "/v1/info", timeout=2.0)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"coordinator not ready in {timeout_s:.0f}s; see {self.log_path}")

    def operator_token(self, timeout_s: float = 10.0) -> str:
        """The token printed at start (`dashboard: ...?token=T`)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            m = re.findall(r"\?token=(\S+)", self.log_path.read_text(errors="replace"))
            if m:
                return m[-1]
            time.sleep(0.1)
        raise TimeoutError("no operator token in the coordinator's output")

    def proc_stats(self) -> dict[str, float]:
        """RSS and peak RSS (MiB) and user+system CPU seconds of the coordinator process so far (Linux /proc)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15 of stat)
        kb = {"VmRSS:": 0, "VmHWM:": 0}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                name = line.split(None, 1)[0] if line.strip() else ""
                if name in kb:
                    kb[name] = int(line.split()[1])
        return {"rss_mib": kb["VmRSS:"] / 1024, "rss_peak_mib": kb["VmHWM:"] / 1024, "cpu_s": cpu}

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
