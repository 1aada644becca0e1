"""What only a socket shows (issue 10): slowloris, the connection cap, the body deadline, oversized headers and a
real process's RSS under unauthenticated 60 MiB POSTs. One `trainnet coordinator` subprocess on loopback with
short limits (--header-timeout 1 --body-timeout 6 --max-connections 24 --max-connections-per-address 16);
everything else is in-process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from trainnet.worker.procs import Child, free_port, write_toml

HEADER_S, BODY_S, MAX_CONN, PER_ADDRESS = 1.0, 6.0, 24, 16
MIB = 1 << 20


class Coordinator:
    def __init__(self, tmp: Path) -> None:
        run = write_toml(tmp / "run.toml", {
            "name": "sockets", "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
            "data": {"shard_bytes": 32768, "val_every": 8, "max_bytes": 1_048_576}, "inner": {"batch_size": 4},
            "consensus": {"h": 5, "quorum": 2}, "sim": {"tokens": 100_000, "codec": "q2"}})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child = Child("coordinator", ["coordinator", "--run", str(run), "--state", str(tmp / "state"),
                                           "--port", str(self.port), "--log-level", "warning",
                                           "--header-timeout", str(HEADER_S), "--body-timeout", str(BODY_S),
                                           "--max-connections", str(MAX_CONN), "--max-connections-per-address",
                                           str(PER_ADDRESS), "--eval-interval", "3600"],
                           tmp / "coordinator.log")
        self.child.start()
        end = time.monotonic() + 90
        while time.monotonic() < end:
            assert self.child.alive, self.child.log_tail()
            try:
                if httpx.get(self.url + "/v1/info", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"coordinator not ready:\n{self.child.log_tail()}")

    def up(self) -> bool:
        return self.child.alive and httpx.get(self.url + "/v1/info", timeout=5).status_code == 200

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.child.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return s


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    c = Coordinator(tmp_path_factory.mktemp("sockets"))
    yield c
    c.child.stop()


def closed_by_server(s: socket.socket, within: float) -> float | None:
    """Seconds until the server closes `s` (recv gives b'' or an error), or None if still open after `within`."""
    t0 = time.monotonic()
    s.settimeout(0.1)
    while time.monotonic() - t0 < within:
        try:
            if s.recv(4096) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - t0
    return None


def closed_now(socks: list[socket.socket]) -> int:
    """How many of `socks` the server has closed (checked without waiting)."""
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                n += 1
        except BlockingIOError:
            pass
        except OSError:
            n += 1
        s.setblocking(True)
    return n


def read_reply(s: socket.socket, timeout: float) -> bytes:
    """One HTTP reply (head and a Content-Length body), or what came before the server closed / the timeout."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                               if ln.lower().startswith(b"content-length:")), 0)
                if len(body) >= length:
                    break
    except OSError:
        pass
    return data


def test_slowloris_sockets_are_dropped_at_the_header_deadline(coord: Coordinator) -> None:
    socks = [coord.connect() for _ in range(12)]
    for s in socks:
        s.sendall(b"POST /v1/lease HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    t0 = time.monotonic()
    for _ in range(3):  # one more header byte every 0.4 s: never a complete request
        time.sleep(0.4)
        for s in socks:
            try:
                s.sendall(b"a")
            except OSError:
                pass
    waits = [closed_by_server(s, HEADER_S + 3.0) for s in socks]
    for s in socks:
        s.close()
    assert all(w is not None for w in waits), waits
    assert time.monotonic() - t0 < HEADER_S + 4.0
    assert coord.up()


def test_connection_cap_closes_the_excess_and_serves_again(coord: Coordinator) -> None:
    """16 idle sockets from each of two addresses (32 > the cap of 24): 8 closed at once, the rest at the
    header deadline; then the coordinator serves again."""
    socks = [coord.connect() for _ in range(PER_ADDRESS)]
    for _ in range(PER_ADDRESS):
        s = socket.socket()
        s.bind(("127.0.0.3", 0))
        s.connect(("127.0.0.1", coord.port))
        socks.append(s)
    time.sleep(0.3)
    assert closed_now(socks) == 2 * PER_ADDRESS - MAX_CONN  # over the cap: closed before a byte is read
    time.sleep(HEADER_S + 1.5)
    assert closed_now(socks) == len(socks)  # the idle rest: dropped at the header deadline
    for s in socks:
        s.close()
    assert coord.up()


def test_one_address_cannot_take_every_connection(coord: Coordinator) -> None:
    """20 idle sockets from 127.0.0.1: 16 are held (until the header deadline), the rest closed at once; a
    client from another address (127.0.0.2) is served meanwhile."""
    socks = [coord.connect() for _ in range(PER_ADDRESS + 4)]
    time.sleep(0.3)
    assert closed_now(socks) == 4
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=5) as other:
        assert other.get(coord.url + "/v1/info").status_code == 200
    for s in socks:
        s.close()


def test_body_deadline_answers_408(coord: Coordinator) -> None:
    """A JSON body trickled after complete headers: 408 at the header deadline (not the upload's 120 s)."""
    s = coord.connect()
    s.sendall(b"POST /v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 200\r\n\r\n{\"public_key\": ")
    t0 = time.monotonic()
    reply = read_reply(s, BODY_S + 5.0)
    s.close()
    assert b" 408 " in reply.split(b"\r\n")[0] and b"body_timeout" in reply, reply[:200]
    assert HEADER_S - 0.5 < time.monotonic() - t0 < HEADER_S + 2.0 < BODY_S  # a JSON body: the header deadline
    assert coord.up()


@pytest.mark.parametrize("size,pieces", [(64 * 1024, 1), (64 * 1024, 64), (1 << 20, 1)])
def test_oversized_headers_are_refused(coord: Coordinator, size: int, pieces: int) -> None:
    """In one segment or trickled: a head over 16 KiB is answered 431 and the connection closed."""
    s = coord.connect()
    head = b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    step = -(-len(head) // pieces)
    try:
        for i in range(0, len(head), step):
            s.sendall(head[i:i + step])
    except OSError:
        pass  # the server may close while we still send
    reply = read_reply(s, 5.0)
    s.close()
    status = reply.split(b"\r\n")[0]
    assert b" 431 " in status or b" 400 " in status or reply == b"", reply[:200]
    assert b" 200 " not in status
    assert coord.up()


def test_a_normal_request_with_a_body_in_the_same_segment_is_served(coord: Coordinator) -> None:
    """The head cap counts the head only: a 200 KiB body right behind a small head is not mistaken for it."""
    s = coord.connect()
    body = b"{" + b" " * (200 * 1024) + b"}"
    s.sendall(b"POST /v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    reply = read_reply(s, 5.0)
    s.close()
    assert b" 413 " in reply.split(b"\r\n")[0], reply[:200]  # the JSON cap (16 KiB), not the head cap


def test_concurrent_unauthenticated_60_mib_posts_leave_rss_flat(coord: Coordinator) -> None:
    """8 clients each announce and start sending a 60 MiB body to signed endpoints without valid signatures."""
    before = coord.rss_mb()
    replies: list[bytes] = []

    def attack(i: int) -> None:
        s = coord.connect()
        path = [b"/v1/lease", b"/v1/update/t0000000", b"/v1/audit/t0000000/residuals", b"/v1/heartbeat"][i % 4]
        s.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Length: " + str(60 * MIB).encode() + b"\r\n\r\n")
        chunk = b"\0" * MIB
        s.settimeout(0.5)
        got = b""
        for _ in range(60):
            try:
                s.sendall(chunk)
            except OSError:
                break  # refused and closed, or our send buffer is full and nobody reads
            try:
                got = s.recv(4096)
                if got:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        if not got:
            try:
                s.settimeout(5.0)
                got = s.recv(4096)
            except OSError:
                pass
        replies.append(got)
        s.close()

    threads = [threading.Thread(target=attack, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = coord.rss_mb()
    statuses = [r.split(b"\r\n")[0] for r in replies]
    assert len(replies) == 8 and all(b" 401 " in s for s in statuses), statuses
    assert after - before < 64, (before, after)
    assert coord.up()
