"""A local cluster of real processes on 127.0.0.1: one coordinator, N workers (used by `trainnet demo`
and the worker tests).

    write_toml(out / "run.toml", {"name": "demo", "model": {"n_layer": 2}, "sim": {"tokens": 100_000}})
    with LocalCluster(out, out / "run.toml", workers=3) as cl:
        cl.start_coordinator(); cl.wait_ready(); cl.start_workers()
        while not cl.status()["done"]: ...
    # every child is terminated (SIGTERM, then SIGKILL) when the block exits, also on Ctrl-C

Children run `python -m trainnet.cli ...` with this package importable; their output goes to
out/logs/<name>.log.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

import trainnet


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    """This environment, with the directory holding the `trainnet` package first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(trainnet.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "-_" for c in k) else _toml_value(k)


def _toml_table(lines: list[str], name: str, table: dict[str, Any]) -> None:
    """Scalars of `table` under [name], then its sub-tables as [name.sub] (None values are left out)."""
    if name:
        lines += ["", f"[{name}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None and not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            _toml_table(lines, f"{name}.{_toml_key(k)}" if name else _toml_key(k), v)


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """Write a nested dict as TOML: scalars first, then one table per dict, at any depth ([model] then
    [model.hf]). None values are left out (TOML has no null)."""
    lines: list[str] = []
    _toml_table(lines, "", data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


class Child:
    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.args, self.log_path = name, args, log_path
        self.env = env or {}  # added to child_env() (e.g. the object store's endpoint and credentials)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "trainnet.cli", *self.args], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=child_env() | self.env)
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.alive:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit status (None if even the killed process was not
        reaped within 30 s: on a swamped machine that happens, and this runs on error paths, where raising
        would hide the error being handled)."""
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    return None
        return self.proc.returncode

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class LocalCluster:
    def __init__(self, out: Path, run_toml: Path, workers: int = 3, port: int = 0,
                 worker_args: list[str] | None = None, coordinator_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.out = Path(out)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The operator's token (per-node detail, the dashboard): chosen here so the cluster can read them.
        self.operator_token = secrets.token_urlsafe(18)
        self.coordinator = Child("coordinator", ["coordinator", "--run", str(run_toml), "--state",
                                                 str(self.out / "coordinator"), "--port", str(self.port),
                                                 "--operator-token", self.operator_token,
                                                 *(coordinator_args or [])], self.out / "logs" / "coordinator.log",
                                 env)
        self.workers = [
            Child(f"worker{i}", ["worker", "--coordinator", self.url, "--state", str(self.worker_dir(i)),
                                 "--quiet", *(worker_args or [])], self.out / "logs" / f"worker{i}.log")
            for i in range(workers)
        ]
        self.env = env
        self.services: list[Child] = []  # other processes of the run (aggregators), stopped with it
        self._http = httpx.Client(timeout=5.0)

    def add_service(self, name: str, args: list[str]) -> Child:
        """Another process of this run (e.g. `aggregator --run ...`), with the cluster's environment."""
        child = Child(name, args, self.out / "logs" / f"{name}.log", self.env)
        self.services.append(child)
        return child

    def worker_dir(self, i: int) -> Path:
        return self.out / "workers" / f"w{i}"

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start_coordinator(self) -> None:
        self.coordinator.start()

    def start_workers(self) -> None:
        for w in self.workers:
            w.start()

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Poll GET /v1/info until the coordinator answers; raise RuntimeError with its log if it dies."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.coordinator.alive:
                raise RuntimeError(f"coordinator exited with {self.coordinator.returncode}:\n"
                                   f"{self.coordinator.log_tail()}")
            try:
                r = self._http.get(self.url + "/v1/info")
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"coordinator not ready after {timeout:.0f}s:\n{self.coordinator.log_tail()}")

    def status(self) -> dict[str, Any]:
        r = self._http.get(self.url + "/v1/status")
        r.raise_for_status()
        return r.json()

    def operator_status(self) -> dict[str, Any]:
        """The operator's view: public status plus the node table, tokens and persistence figures."""
        r = self._http.get(self.url + "/v1/operator/status",
                           headers={"Authorization": f"Bearer {self.operator_token}"})
        r.raise_for_status()
        return r.json()

    def dashboard(self) -> dict[str, Any]:
        r = self._http.get(self.url + "/v1/dashboard", headers={"Authorization": f"Bearer {self.operator_token}"},
                           timeout=30.0)
        r.raise_for_status()
        return r.json()

    def get(self, path: str) -> httpx.Response:
        return self._http.get(self.url + path, timeout=60.0)

    def stop_all(self) -> None:
        # Workers first (they abandon their leases), then the coordinator.
        for w in self.workers:
            w.signal(signal.SIGTERM)
        for w in self.workers:
            w.stop()
        self._http.close()  # first: an open keep-alive connection can hold the coordinator's graceful shutdown
        self.coordinator.stop()
        for c in self.services:
            c.stop()
