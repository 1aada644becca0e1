"""A throwaway PostgreSQL server on loopback, for tests and benchmarks.

    with postgres_server() as base_url:            # "postgresql://postgres@127.0.0.1:PORT"
        ...connect to f"{base_url}/postgres", CREATE DATABASE t1, use f"{base_url}/t1"...

`find_pg_bin()` returns the folder holding `initdb` / `pg_ctl` (PATH first, then /usr/lib/postgresql/*/bin),
or None when PostgreSQL is not installed, so callers can skip with a reason. The server runs in a temporary
directory with trust authentication, listens on 127.0.0.1 only, and is stopped with `pg_ctl stop -m immediate`
and deleted on exit. initdb refuses to run as root, so as root the server runs as the `postgres` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def find_pg_bin() -> Path | None:
    """The directory with PostgreSQL's initdb and pg_ctl, or None when they are not installed."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        # /usr/local/bin/initdb may be a wrapper or a copy; prefer the real install dir beside it when it exists.
        real = Path(os.path.realpath(initdb)).parent
        if (real / "pg_ctl").exists():
            return real
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                      if Path(p).parent.name.isdigit() else 0)
    for d in reversed(versions):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; drop to the postgres account when we are root.
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError as e:
        raise RuntimeError("running as root but there is no 'postgres' user to run the test server as") from e
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")


@contextlib.contextmanager
def postgres_server(bin_dir: Path | None = None, user: str = "postgres") -> Iterator[str]:
    """Start a throwaway server; yields its base URL `postgresql://USER@127.0.0.1:PORT` (append `/dbname`)."""
    bin_dir = bin_dir or find_pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin")
    root = Path(tempfile.mkdtemp(prefix="trainnet-pg-"))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    started = False
    try:
        # --no-sync: the cluster is thrown away, so initdb need not fsync its template files.
        _run([str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", f"--username={user}", "--encoding=UTF8",
              "--locale=C", "--no-sync"], "initdb")
        for attempt in range(3):  # a free port can be taken between probing and binding; try another
            port = _free_port()
            opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock}"
            try:
                _run([str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(log),
                      "-o", opts], "pg_ctl start")
                started = True
                break
            except RuntimeError:
                if attempt == 2:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise RuntimeError(f"could not start the test PostgreSQL server; log tail:\n{tail}") from None
        yield f"postgresql://{user}@127.0.0.1:{port}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bin_dir / "pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(data)], "pg_ctl stop")
        shutil.rmtree(root, ignore_errors=True)
