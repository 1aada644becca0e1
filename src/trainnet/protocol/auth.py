"""Node identity and request signing (HTTP protocol 2), shared by the coordinator server and the worker.

    key = load_or_create_key(state_dir)                # ed25519, kept as state_dir/node_key.pem (0600)
    pub = public_key_hex(key)                          # hex of the raw 32-byte public key
    node_id = node_id_of(bytes.fromhex(pub))           # "n" + sha256(pub)[:16]
    headers = sign_request(key, node_id, run_id, "POST", "/v1/lease", body, now=time.time(), counter=ctr.next(now))
    err, req = verify_request(pub, headers, run_id, "POST", "/v1/lease", now=time.time())   # (None, parsed) if ok
    sig = sign_update(key, run_id, node_id, task_id, base_version, sha256(payload), sha256(prefix + header))

Signed request (protocol 2): "trainnet-req/2\\n{run_id}\\n{METHOD}\\n{PATH}\\n{node_id}\\n{time}\\n{counter}\\n
{body_sha256}", with the body's sha256 in a header (checked before the body is read) and a per-key counter that
must grow (replays and other runs' requests are refused). Update message: "trainnet-update/2\\n{run_id}\\n
{node_id}\\n{task_id}\\n{base_version}\\n{body_sha256}\\n{header_sha256}".
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_FILE = "node_key.pem"
MAX_SKEW_S = 300.0

HDR_NODE = "X-TrainNet-Node"
HDR_TIME = "X-TrainNet-Time"
HDR_SIG = "X-TrainNet-Signature"
HDR_UPDATE_SIG = "X-TrainNet-Update-Signature"
HDR_COUNTER = "X-TrainNet-Counter"
HDR_BODY = "X-TrainNet-Body-SHA256"

# Error codes (the HTTP API's reason codes).
ERR_BAD_SIGNATURE = "bad_signature"
ERR_STALE_TIMESTAMP = "stale_timestamp"


def load_or_create_key(state_dir: Path) -> Ed25519PrivateKey:
    """Load `state_dir/node_key.pem`, or create a fresh ed25519 key there (PKCS8 PEM, mode 0600)."""
    state_dir = Path(state_dir)
    path = state_dir / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an ed25519 private key")
        return key
    state_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(path.name + ".tmp")
    # Created 0600 from the start so the secret is never readable by others, then renamed atomically.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key


def public_key_raw(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key of a private key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_hex(key: Ed25519PrivateKey) -> str:
    """Hex of the raw 32-byte public key (what /v1/register sends)."""
    return public_key_raw(key).hex()


def node_id_of(public_key_raw: bytes) -> str:
    """A node's id: "n" + the first 16 hex digits of sha256(raw public key)."""
    return "n" + hashlib.sha256(public_key_raw).hexdigest()[:16]


def request_message(run_id: str, method: str, path: str, node_id: str, time_str: str, counter: int,
                    body_sha256: str) -> bytes:
    """The bytes a request signature covers (protocol 2): bound to the run, single-use by the counter."""
    return (f"trainnet-req/2\n{run_id}\n{method.upper()}\n{path}\n{node_id}\n{time_str}\n{int(counter)}\n"
            f"{body_sha256}").encode()


def _fmt_time(now: float) -> str:
    return f"{now:.3f}"


class Counter:
    """A node's request counter: strictly increasing, at least the time in microseconds (so a restarted node
    continues above what it used before), and raised past a coordinator's floor when told (`bump`)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self, now: float) -> int:
        with self._lock:
            self._last = max(self._last + 1, int(now * 1e6))
            return self._last

    def bump(self, floor: int) -> None:
        with self._lock:
            self._last = max(self._last, int(floor))


def sign_request(key: Ed25519PrivateKey, node_id: str, run_id: str, method: str, path: str, body: bytes,
                 now: float, counter: int) -> dict[str, str]:
    """The signing headers of a request (merge them into its headers). The body's sha256 travels in a header
    so the coordinator checks the signature before it reads a byte of the body."""
    t = _fmt_time(now)
    digest = hashlib.sha256(body).hexdigest()
    sig = key.sign(request_message(run_id, method, path, node_id, t, counter, digest)).hex()
    return {HDR_NODE: node_id, HDR_TIME: t, HDR_COUNTER: str(int(counter)), HDR_BODY: digest, HDR_SIG: sig}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Case-insensitive lookup: works with plain dicts as well as HTTP header mappings.
    v = headers.get(name)
    if v is None:
        v = headers.get(name.lower())
    if v is None:
        low = name.lower()
        for k, val in headers.items():
            if k.lower() == low:
                return val
    return v


def load_public_key(public_key_hex_str: str) -> Ed25519PublicKey | None:
    """Parse a hex raw public key; None if it is not 32 valid bytes."""
    try:
        raw = bytes.fromhex(public_key_hex_str)
    except (ValueError, TypeError):
        return None
    if len(raw) != 32:
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None


def _verify(public_key_hex_str: str, signature_hex: str, message: bytes) -> bool:
    pub = load_public_key(public_key_hex_str)
    if pub is None or not isinstance(signature_hex, str) or len(signature_hex) != 128:
        return False
    try:
        sig = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    try:
        pub.verify(sig, message)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class SignedRequest:
    node_id: str
    time: float
    counter: int
    body_sha256: str
    signature: str


def parse_signed(headers: Mapping[str, str]) -> SignedRequest | None:
    """The signing headers, syntactically checked (None if any is missing or malformed)."""
    node, t, ctr = _header(headers, HDR_NODE), _header(headers, HDR_TIME), _header(headers, HDR_COUNTER)
    body, sig = _header(headers, HDR_BODY), _header(headers, HDR_SIG)
    if not node or not t or not ctr or not body or not sig:
        return None
    if len(node) > 64 or len(t) > 32 or len(ctr) > 20 or not ctr.isdigit() or len(sig) != 128:
        return None
    if len(body) != 64 or any(c not in "0123456789abcdef" for c in body):
        return None
    try:
        ts = float(t)
    except ValueError:
        return None
    if not math.isfinite(ts):
        return None
    return SignedRequest(node, ts, int(ctr), body, sig)


def verify_request(public_key_hex: str, headers: Mapping[str, str], run_id: str, method: str, path: str,
                   now: float, max_skew: float = MAX_SKEW_S) -> tuple[str | None, SignedRequest | None]:
    """Check a request's signature headers (before its body is read): (None, parsed) if valid, else
    ("bad_signature" | "stale_timestamp", parsed or None). The counter is checked by the caller (replays);
    the body must then hash to `parsed.body_sha256`."""
    r = parse_signed(headers)
    if r is None:
        return ERR_BAD_SIGNATURE, None
    pub = load_public_key(public_key_hex)
    if pub is None or node_id_of(bytes.fromhex(public_key_hex)) != r.node_id:
        return ERR_BAD_SIGNATURE, r
    t = _header(headers, HDR_TIME) or ""
    msg = request_message(run_id, method, path, r.node_id, t, r.counter, r.body_sha256)
    if not _verify(public_key_hex, r.signature, msg):
        return ERR_BAD_SIGNATURE, r
    if abs(now - r.time) > max_skew:
        return ERR_STALE_TIMESTAMP, r
    return None, r


def update_message(run_id: str, node_id: str, task_id: str, base_version: int, body_sha256: str,
                   header_sha256: str) -> bytes:
    """The bytes an update signature covers: the update's sha256 and its header's sha256 (which lets a reader
    of a range verify what it read), bound to run, node, task and base version."""
    return (f"trainnet-update/2\n{run_id}\n{node_id}\n{task_id}\n{int(base_version)}\n{body_sha256}\n"
            f"{header_sha256}").encode()


def sign_update(key: Ed25519PrivateKey, run_id: str, node_id: str, task_id: str, base_version: int,
                body_sha256: str, header_sha256: str) -> str:
    """Hex signature for X-TrainNet-Update-Signature."""
    return key.sign(update_message(run_id, node_id, task_id, base_version, body_sha256, header_sha256)).hex()


def verify_update(public_key_hex: str, signature_hex: str, run_id: str, node_id: str, task_id: str,
                  base_version: int, body_sha256: str, header_sha256: str) -> bool:
    """True if `signature_hex` is the node's signature over this update."""
    return _verify(public_key_hex, signature_hex,
                   update_message(run_id, node_id, task_id, base_version, body_sha256, header_sha256))


def pow_ok(run_id: str, public_key: str, nonce: str, bits: int) -> bool:
    """Proof of work at registration: sha256(run_id:public_key:nonce) starts with `bits` zero bits."""
    if bits <= 0:
        return True
    digest = int.from_bytes(hashlib.sha256(f"{run_id}:{public_key}:{nonce}".encode()).digest(), "big")
    return digest >> (256 - bits) == 0


def solve_pow(run_id: str, public_key: str, bits: int) -> str:
    """A nonce for pow_ok (the worker's side; expected cost 2**bits hashes)."""
    i = 0
    while not pow_ok(run_id, public_key, str(i), bits):
        i += 1
    return str(i)
