"""Node identity and request signing (HTTP protocol v1), shared by the coordinator server and the worker.

    key = load_or_create_key(state_dir)                # ed25519, kept as state_dir/node_key.pem (0600)
    pub = public_key_hex(key)                          # hex of the raw 32-byte public key
    node_id = node_id_of(bytes.fromhex(pub))           # "n" + sha256(pub)[:16]
    headers = sign_request(key, node_id, "POST", "/v1/lease", body, now=time.time())
    err = verify_request(pub, headers, "POST", "/v1/lease", body, now=time.time())   # None if ok
    sig = sign_update(key, run_id, node_id, task_id, base_version, sha256(payload).hexdigest())
    ok = verify_update(pub, sig, run_id, node_id, task_id, base_version, sha256(payload).hexdigest())

Signed request message: "trainnet-req/1\\n{METHOD}\\n{PATH}\\n{time}\\n{sha256(body).hexdigest()}".
Update message: "trainnet-update/1\\n{run_id}\\n{node_id}\\n{task_id}\\n{base_version}\\n{body_sha256}".
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
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


def request_message(method: str, path: str, time_str: str, body: bytes) -> bytes:
    """The bytes a request signature covers."""
    digest = hashlib.sha256(body).hexdigest()
    return f"trainnet-req/1\n{method.upper()}\n{path}\n{time_str}\n{digest}".encode()


def _fmt_time(now: float) -> str:
    return f"{now:.3f}"


def sign_request(key: Ed25519PrivateKey, node_id: str, method: str, path: str, body: bytes,
                 now: float) -> dict[str, str]:
    """The three signing headers for a request (merge them into the request's headers)."""
    t = _fmt_time(now)
    sig = key.sign(request_message(method, path, t, body)).hex()
    return {HDR_NODE: node_id, HDR_TIME: t, HDR_SIG: sig}


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


def verify_request(public_key_hex: str, headers: Mapping[str, str], method: str, path: str, body: bytes,
                   now: float, max_skew: float = MAX_SKEW_S) -> str | None:
    """Check a request's signature headers: None if valid, else "bad_signature" or "stale_timestamp".

    The node header must match the key (node_id_of(public key)); the timestamp must be within
    `max_skew` seconds of `now`."""
    node = _header(headers, HDR_NODE)
    t = _header(headers, HDR_TIME)
    sig = _header(headers, HDR_SIG)
    if not node or not t or not sig or len(t) > 32:
        return ERR_BAD_SIGNATURE
    pub = load_public_key(public_key_hex)
    if pub is None or node_id_of(bytes.fromhex(public_key_hex)) != node:
        return ERR_BAD_SIGNATURE
    try:
        ts = float(t)
    except ValueError:
        return ERR_BAD_SIGNATURE
    if not math.isfinite(ts):
        return ERR_BAD_SIGNATURE
    if not _verify(public_key_hex, sig, request_message(method, path, t, body)):
        return ERR_BAD_SIGNATURE
    if abs(now - ts) > max_skew:
        return ERR_STALE_TIMESTAMP
    return None


def update_message(run_id: str, node_id: str, task_id: str, base_version: int, body_sha256: str) -> bytes:
    """The bytes an update signature covers (binds payload hash to run, node, task, base version)."""
    return f"trainnet-update/1\n{run_id}\n{node_id}\n{task_id}\n{int(base_version)}\n{body_sha256}".encode()


def sign_update(key: Ed25519PrivateKey, run_id: str, node_id: str, task_id: str, base_version: int,
                body_sha256: str) -> str:
    """Hex signature for X-TrainNet-Update-Signature."""
    return key.sign(update_message(run_id, node_id, task_id, base_version, body_sha256)).hex()


def verify_update(public_key_hex: str, signature_hex: str, run_id: str, node_id: str, task_id: str,
                  base_version: int, body_sha256: str) -> bool:
    """True if `signature_hex` is the node's signature over this update."""
    return _verify(public_key_hex, signature_hex,
                   update_message(run_id, node_id, task_id, base_version, body_sha256))
