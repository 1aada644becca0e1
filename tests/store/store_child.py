"""A second process for the state store tests (another coordinator or aggregator on the same store).

    child = Child("hold", url, "holder-proc")   # from a test: start it; child.line() reads one line (bounded wait)
    python store_child.py hold URL OWNER      # acquire the writer role, print the token, sleep until killed
    python store_child.py commit URL          # acquire, then commit change 1, 2, 3, ... printing each after commit
    python store_child.py claim URL OWNER     # print "ready", wait for a line on stdin, claim tasks until none left

Every line is flushed at once, so a line the parent read was printed after the call before it returned.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainnet.store.state import Changes, open_state_store

SRC = Path(__file__).resolve().parents[2] / "src"


class Child:
    """The script below, run as a subprocess on this checkout's sources; lines read with a deadline."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0)
        self.pid = self.proc.pid
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def line(self, timeout_s: float = 30.0) -> str | None:
        """The next line, or None at end of output; raises TimeoutError after timeout_s without one."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                raise TimeoutError(f"child {self.pid} printed no line in {timeout_s} s; stderr: {self.stderr()}")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                if self._buf:
                    rest, self._buf = self._buf, b""
                    return rest.decode()
                return None
            self._buf += chunk
        text, self._buf = self._buf.split(b"\n", 1)
        return text.decode()

    def rest(self, timeout_s: float = 30.0) -> list[str]:
        """Every line until the child's output ends."""
        lines = []
        while (text := self.line(timeout_s)) is not None:
            lines.append(text)
        return lines

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill9()
        self._sel.close()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


def main(argv: list[str]) -> None:
    mode, url = argv[0], argv[1]
    store = open_state_store(url)
    if mode == "hold":
        print(store.acquire_writer(argv[2]), flush=True)
        while True:
            time.sleep(60)
    elif mode == "commit":
        fence = store.acquire_writer("durability-child")
        i = 0
        while True:
            i += 1
            store.commit(Changes(meta={"last": i}, docs={"n": {str(i): {"i": i}}},
                                 logs={"n": {str(i): {"i": i}}},
                                 events=[{"time": float(i), "kind": "n", "data": {"i": i}}]), fence)
            print(i, flush=True)
    elif mode == "claim":
        print("ready", flush=True)
        sys.stdin.readline()
        while (task := store.claim_merge_task(argv[2], now=1000.0, lease_s=1e6)) is not None:
            print(f"{task['job_id']} {task['shard']} {task['phase']}", flush=True)
            time.sleep(0.002)  # an aggregator works between claims; without it one SQLite claimer can starve others
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
