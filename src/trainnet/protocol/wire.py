"""Safe wire format for compressed model updates (no pickle; every field validated before allocating).

    data = encode_update({"w": delta}, "topk:0.015+q2", run_id="r", node_id="n", task_id="t", base_version=3)
    upd = decode_update(data)                 # DecodedUpdate(header=WireHeader(...), tensors={"w": float32})
    hdr = decode_header(data)                 # header only, payload hash checked, nothing decoded
    bits = encoded_size_bits_per_param(data)  # whole message bits / parameters

Layout: b"TNUP" | u16 LE format version | u16 LE flags (0) | u32 LE header length H | H bytes UTF-8 JSON
header | payload (the parts' raw little-endian buffers, back to back, in header order). Format 2 adds, per
part, the sha256 of every `hash_block` bytes of it, so a reader that fetches only a range of the payload
(an aggregator shard: wire_range.py) can verify what it read. Full description: docs/PROTOCOL.md, "Update
wire format". Every malformed input raises WireFormatError (a ValueError).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

import numpy as np
import torch

from trainnet.codec.base import DTYPE_NAMES, PART_DTYPES, Codec, EncodedTensor
from trainnet.codec.spec import parse_codec

MAGIC = b"TNUP"
FORMAT_VERSION = 2
HASH_BLOCK = 1 << 20  # bytes of a part covered by one sha256 in the header (format 2)
PREFIX = struct.Struct("<4sHHI")  # magic, version, flags, header length
SOURCE_DTYPES = ("float32", "float16", "bfloat16", "float64")
_HEADER_KEYS = {"format", "run_id", "node_id", "task_id", "base_version", "codec", "extra", "tensors",
                "payload_bytes", "payload_sha256", "hash_block"}
_TENSOR_KEYS = {"name", "shape", "dtype", "numel", "parts"}
_PART_KEYS = {"name", "dtype", "offset", "length", "sha256"}
# torch dtype -> (same-width integer dtype to view as, little-endian numpy dtype of that width)
_RAW = {torch.uint8: (torch.uint8, "<u1"), torch.int16: (torch.int16, "<i2"),
        torch.float16: (torch.int16, "<i2"), torch.bfloat16: (torch.int16, "<i2"),
        torch.float32: (torch.int32, "<i4")}


class WireFormatError(ValueError):
    """A message that is not a valid TrainNet update; the text names what is wrong."""


@dataclass(frozen=True)
class WireLimits:
    """Upper bounds checked before anything is allocated. Tune per deployment."""

    max_total_bytes: int = 1 << 30
    max_header_bytes: int = 1 << 20
    max_tensors: int = 4096
    max_elements_per_tensor: int = 1 << 28
    max_total_elements: int = 1 << 28
    max_ndim: int = 8
    max_string_len: int = 256
    # Canonical codec specs this receiver accepts (None: any valid spec). A coordinator fixes its run's codec
    # here so that nobody can make it decode an unexpected, more expensive codec.
    allowed_codecs: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PartEntry:
    name: str
    dtype: str
    offset: int
    length: int
    sha256: tuple[str, ...] = ()  # one digest per HASH_BLOCK bytes of the part


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    parts: tuple[PartEntry, ...]


@dataclass(frozen=True)
class WireHeader:
    format_version: int
    run_id: str
    node_id: str
    task_id: str
    base_version: int
    codec: str
    tensors: tuple[TensorEntry, ...]
    payload_bytes: int
    payload_sha256: str
    extra: dict = field(default_factory=dict)

    @property
    def total_numel(self) -> int:
        return sum(t.numel for t in self.tensors)


@dataclass
class DecodedUpdate:
    header: WireHeader
    tensors: dict[str, torch.Tensor]


def header_sha256(data: bytes) -> str:
    """sha256 of a message's prefix and header: what an update signature commits to besides the whole
    message, so that a reader of a byte range can authenticate the header (and, through it, every block)."""
    if len(data) < PREFIX.size:
        raise WireFormatError("message shorter than its prefix")
    hlen = PREFIX.unpack_from(data)[3]
    return hashlib.sha256(data[:PREFIX.size + hlen]).hexdigest()


def block_hashes(raw: bytes | memoryview) -> list[str]:
    """sha256 hex of every HASH_BLOCK bytes of a part (the last block may be shorter; none for an empty part)."""
    view = memoryview(raw)
    return [hashlib.sha256(view[i:i + HASH_BLOCK]).hexdigest() for i in range(0, len(view), HASH_BLOCK)]


def _to_bytes(t: torch.Tensor) -> bytes:
    int_dtype, np_dtype = _RAW[t.dtype]
    return t.detach().cpu().contiguous().view(int_dtype).numpy().astype(np_dtype, copy=False).tobytes()


def encode_update(tensors: dict[str, torch.Tensor | EncodedTensor], codec: str | Codec = "fp32", *,
                  run_id: str = "", node_id: str = "", task_id: str = "", base_version: int = 0,
                  extra: dict | None = None) -> bytes:
    """Encode named tensors (or EncodedTensors already made with `codec`, e.g. by ErrorFeedback) to bytes.

    Pass a long-lived Codec object (or EncodedTensors) with stochastic-rounding specs: a spec string builds a
    fresh codec whose generator restarts from its seed on every call.
    """
    c = parse_codec(codec) if isinstance(codec, str) else codec
    for what, s in (("run_id", run_id), ("node_id", node_id), ("task_id", task_id)):
        if not isinstance(s, str):
            raise ValueError(f"{what} must be a str")
    if type(base_version) is not int or base_version < 0:
        raise ValueError("base_version must be a non-negative int")
    entries, chunks, offset = [], [], 0
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or any(ord(ch) < 32 for ch in name):
            raise ValueError(f"tensor name {name!r} must be a non-empty string without control characters")
        enc = t if isinstance(t, EncodedTensor) else c.encode(t)
        if enc.dtype not in SOURCE_DTYPES:
            raise ValueError(f"tensor {name!r}: source dtype {enc.dtype} not in {SOURCE_DTYPES}")
        if enc.spec != c.spec:
            raise ValueError(f"tensor {name!r} was encoded with {enc.spec!r}, not {c.spec!r}")
        c.validate(enc)
        parts = []
        for pname, p in enc.parts.items():
            raw = _to_bytes(p)
            parts.append({"name": pname, "dtype": DTYPE_NAMES[p.dtype], "offset": offset, "length": len(raw),
                          "sha256": block_hashes(raw)})
            chunks.append(raw)
            offset += len(raw)
        entries.append({"name": name, "shape": list(enc.shape), "dtype": enc.dtype, "numel": enc.numel,
                        "parts": parts})
    payload = b"".join(chunks)
    header = {"format": FORMAT_VERSION, "run_id": run_id, "node_id": node_id, "task_id": task_id,
              "base_version": base_version, "codec": c.spec, "extra": dict(extra or {}), "tensors": entries,
              "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(),
              "hash_block": HASH_BLOCK}
    try:
        text = json.dumps(header, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"header (extra, names) must be JSON-serializable without NaN: {exc}") from None
    hbytes = text.encode("utf-8")
    return PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(hbytes)) + hbytes + payload


# ----------------------------------------------------------------------------------------------- decoding


def _no_dup_keys(pairs: list[tuple[str, object]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise WireFormatError("header JSON has duplicate keys")
    return d


def _reject_constant(name: str) -> None:
    raise WireFormatError(f"header JSON contains non-standard constant {name}")


def _int(v: object, what: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise WireFormatError(f"{what} must be an integer in [{lo}, {hi}], got {str(v)[:40]!r}")
    return v


def _str(v: object, what: str, limits: WireLimits, nonempty: bool = False) -> str:
    if not isinstance(v, str) or len(v) > limits.max_string_len or (nonempty and not v):
        raise WireFormatError(f"{what} must be a {'non-empty ' if nonempty else ''}string of at most "
                              f"{limits.max_string_len} characters")
    if any(ord(ch) < 32 for ch in v):
        raise WireFormatError(f"{what} contains control characters")
    return v


def _obj(v: object, keys: set[str], what: str) -> dict:
    if not isinstance(v, dict) or set(v) != keys:
        got = sorted(v) if isinstance(v, dict) else type(v).__name__
        raise WireFormatError(f"{what} must be an object with keys {sorted(keys)}, got {got}")
    return v


def _parse_tensor(i: int, t: object, codec: Codec, limits: WireLimits, cursor: int) -> TensorEntry:
    t = _obj(t, _TENSOR_KEYS, f"tensors[{i}]")
    name = _str(t["name"], f"tensors[{i}].name", limits, nonempty=True)
    where = f"tensor {name!r}"
    shape = t["shape"]
    if not isinstance(shape, list) or len(shape) > limits.max_ndim:
        raise WireFormatError(f"{where}: shape must be a list of at most {limits.max_ndim} integers")
    numel = 1
    for d in shape:
        numel *= _int(d, f"{where}: shape entry", 0, limits.max_elements_per_tensor)
        if numel > limits.max_elements_per_tensor:
            raise WireFormatError(f"{where}: {shape} exceeds max_elements_per_tensor")
    if _int(t["numel"], f"{where}: numel", 0, limits.max_elements_per_tensor) != numel:
        raise WireFormatError(f"{where}: numel {t['numel']} does not match shape {shape}")
    if t["dtype"] not in SOURCE_DTYPES:
        raise WireFormatError(f"{where}: dtype must be one of {SOURCE_DTYPES}")
    expected = codec.layout(numel)
    parts = t["parts"]
    if not isinstance(parts, list) or len(parts) != len(expected):
        raise WireFormatError(f"{where}: codec {codec.spec!r} needs parts {[p.name for p in expected]}")
    out = []
    for j, (p, e) in enumerate(zip(parts, expected, strict=True)):
        p = _obj(p, _PART_KEYS, f"{where}.parts[{j}]")
        if p["name"] != e.name or p["dtype"] != DTYPE_NAMES[e.dtype]:
            raise WireFormatError(f"{where}: part {j} must be {e.name!r} of dtype {DTYPE_NAMES[e.dtype]}, got "
                                  f"{str(p['name'])[:40]!r} of {str(p['dtype'])[:20]!r}")
        _int(p["offset"], f"{where}.{e.name}.offset", cursor, cursor)
        _int(p["length"], f"{where}.{e.name}.length", e.nbytes, e.nbytes)
        hashes = p["sha256"]
        if not isinstance(hashes, list) or len(hashes) != -(-e.nbytes // HASH_BLOCK) or not all(
                isinstance(x, str) and len(x) == 64 and all(ch in "0123456789abcdef" for ch in x) for x in hashes):
            raise WireFormatError(f"{where}.{e.name}.sha256 must list one 64-hex digest per {HASH_BLOCK} bytes")
        out.append(PartEntry(e.name, p["dtype"], cursor, e.nbytes, tuple(hashes)))
        cursor += e.nbytes
    return TensorEntry(name, tuple(shape), t["dtype"], numel, tuple(out))


def parse_prefix(prefix: bytes | memoryview, total: int, limits: WireLimits) -> int:
    """Check the 12-byte prefix of a `total`-byte message; returns the header length."""
    if total > limits.max_total_bytes:
        raise WireFormatError(f"update is {total} bytes, over max_total_bytes {limits.max_total_bytes}")
    if total < PREFIX.size or len(prefix) < PREFIX.size:
        raise WireFormatError(f"update is {total} bytes, shorter than the {PREFIX.size}-byte prefix")
    magic, version, flags, hlen = PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise WireFormatError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise WireFormatError(f"unsupported format version {version} (this decoder reads {FORMAT_VERSION})")
    if flags != 0:
        raise WireFormatError(f"reserved flags must be 0, got {flags}")
    if hlen > limits.max_header_bytes or hlen > total - PREFIX.size:
        raise WireFormatError(f"header length {hlen} exceeds the limit or the message size")
    return hlen


def parse_header(hbytes: bytes | memoryview, limits: WireLimits) -> tuple[WireHeader, Codec]:
    """Validate a header's JSON (the bytes after the prefix) and the layout it declares; nothing is allocated
    beyond the header itself. The payload length is checked by the caller against `header.payload_bytes`."""
    try:
        text = bytes(hbytes).decode("utf-8")
        h = json.loads(text, object_pairs_hook=_no_dup_keys, parse_constant=_reject_constant)
    except WireFormatError:
        raise
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, too-deep nesting, huge int literals
        raise WireFormatError(f"header is not valid UTF-8 JSON: {str(exc)[:80]}") from None
    h = _obj(h, _HEADER_KEYS, "header")
    _int(h["format"], "header.format", FORMAT_VERSION, FORMAT_VERSION)
    _int(h["hash_block"], "header.hash_block", HASH_BLOCK, HASH_BLOCK)
    ids = [_str(h[k], f"header.{k}", limits) for k in ("run_id", "node_id", "task_id")]
    base_version = _int(h["base_version"], "header.base_version", 0, (1 << 63) - 1)
    if not isinstance(h["extra"], dict):
        raise WireFormatError("header.extra must be an object")
    spec = _str(h["codec"], "header.codec", limits, nonempty=True)
    try:
        codec = parse_codec(spec)
    except ValueError as exc:
        raise WireFormatError(f"unknown or malformed codec: {exc}") from None
    if codec.spec != spec:
        raise WireFormatError(f"codec spec {spec!r} is not canonical (expected {codec.spec!r})")
    if limits.allowed_codecs is not None and spec not in limits.allowed_codecs:
        raise WireFormatError(f"codec {spec!r} is not among the allowed codecs {list(limits.allowed_codecs)}")
    tensors = h["tensors"]
    if not isinstance(tensors, list) or len(tensors) > limits.max_tensors:
        raise WireFormatError(f"header.tensors must be a list of at most {limits.max_tensors} entries")
    entries, names, cursor, total = [], set(), 0, 0
    for i, t in enumerate(tensors):
        e = _parse_tensor(i, t, codec, limits, cursor)
        if e.name in names:
            raise WireFormatError(f"duplicate tensor name {e.name!r}")
        names.add(e.name)
        total += e.numel
        if total > limits.max_total_elements:
            raise WireFormatError(f"total elements exceed max_total_elements {limits.max_total_elements}")
        cursor = e.parts[-1].offset + e.parts[-1].length if e.parts else cursor
        entries.append(e)
    _int(h["payload_bytes"], "header.payload_bytes", cursor, cursor)
    digest = h["payload_sha256"]
    if not isinstance(digest, str) or len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        raise WireFormatError("header.payload_sha256 must be 64 lowercase hex digits")
    return WireHeader(FORMAT_VERSION, *ids, base_version, spec, tuple(entries), cursor, digest, h["extra"]), codec


def _parse(data: object, limits: WireLimits, verify_hash: bool) -> tuple[WireHeader, Codec, memoryview]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireFormatError(f"update must be bytes, got {type(data).__name__}")
    data = memoryview(data).cast("B")
    hlen = parse_prefix(data[:PREFIX.size], len(data), limits)
    header, codec = parse_header(data[PREFIX.size:PREFIX.size + hlen], limits)
    payload = data[PREFIX.size + hlen:]
    if len(payload) != header.payload_bytes:
        raise WireFormatError(f"payload is {len(payload)} bytes, header parts add up to {header.payload_bytes}")
    if verify_hash:
        if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
            raise WireFormatError("payload sha256 does not match the header")
        for e in header.tensors:
            for p in e.parts:
                if block_hashes(payload[p.offset:p.offset + p.length]) != list(p.sha256):
                    raise WireFormatError(f"tensor {e.name!r}: part {p.name!r} does not match its block hashes")
    return header, codec, payload


def _read_part(payload: memoryview, p: PartEntry) -> torch.Tensor:
    dtype = PART_DTYPES[p.dtype]
    int_dtype, np_dtype = _RAW[dtype]
    width = np.dtype(np_dtype).itemsize
    arr = np.frombuffer(payload, dtype=np_dtype, count=p.length // width, offset=p.offset)
    # astype to native order always copies: aligned, writable, independent of the message buffer.
    return torch.from_numpy(arr.astype(np.dtype(np_dtype).newbyteorder("="))).view(dtype)


def decode_header(data: bytes, *, limits: WireLimits | None = None, verify_hash: bool = True) -> WireHeader:
    """Validate framing, header, layout sizes (and the payload hash) without decoding any tensor."""
    return _guard(lambda: _parse(data, limits or WireLimits(), verify_hash)[0])


def decode_update_encoded(data: bytes, *, limits: WireLimits | None = None
                          ) -> tuple[WireHeader, dict[str, EncodedTensor]]:
    """Validate everything and return the packed EncodedTensors (e.g. to store or aggregate compressed)."""
    def run() -> tuple[WireHeader, dict[str, EncodedTensor]]:
        header, codec, payload = _parse(data, limits or WireLimits(), True)
        out = {}
        for e in header.tensors:
            enc = EncodedTensor(codec.spec, e.shape, {p.name: _read_part(payload, p) for p in e.parts}, e.dtype)
            try:
                codec.validate(enc)
            except ValueError as exc:
                raise WireFormatError(f"tensor {e.name!r}: {exc}") from None
            out[e.name] = enc
        return header, out
    return _guard(run)


def decode_update(data: bytes, *, limits: WireLimits | None = None) -> DecodedUpdate:
    """Validate and decode an update into float32 tensors; raises WireFormatError on any problem."""
    def run() -> DecodedUpdate:
        header, encoded = decode_update_encoded(data, limits=limits)
        codec = parse_codec(header.codec)
        tensors = {}
        for name, enc in encoded.items():
            try:
                tensors[name] = codec.decode(enc, validate=False)
            except ValueError as exc:
                raise WireFormatError(f"tensor {name!r}: {exc}") from None
        return DecodedUpdate(header, tensors)
    return _guard(run)


def _guard(fn):  # tiny internal helper; fn takes no arguments
    # Last line of defence: whatever slips past the explicit checks still surfaces as WireFormatError.
    try:
        return fn()
    except WireFormatError:
        raise
    except Exception as exc:
        raise WireFormatError(f"malformed update ({type(exc).__name__}: {str(exc)[:120]})") from None


def encoded_size_bits_per_param(data: bytes | WireHeader, total_bytes: int | None = None) -> float:
    """Bits per parameter of a whole message: 8 * len(message) / number of parameters it carries.

    Pass the message bytes, or a WireHeader plus the message length in `total_bytes`.
    """
    header = data if isinstance(data, WireHeader) else decode_header(data, verify_hash=False)
    n = total_bytes if total_bytes is not None else len(data)  # type: ignore[arg-type]
    return 8 * n / max(header.total_numel, 1)


class WireWriter:
    """Build an update message tensor by tensor without holding its payload in memory (aggregators publish
    model deltas this way).

        w = WireWriter(open(tmp, "w+b"), "q4", run_id="r", base_version=3)
        w.add("000000000000", encoded_or_tensor); ...
        for piece in w.pieces(): sink.write(piece)      # prefix + header, then the payload from the file

    The bytes are exactly what `encode_update` makes for the same tensors in the same order.
    """

    def __init__(self, payload_file, codec: str | Codec, *, run_id: str = "", node_id: str = "", task_id: str = "",
                 base_version: int = 0, extra: dict | None = None) -> None:
        self.f = payload_file
        self.codec = parse_codec(codec) if isinstance(codec, str) else codec
        self.meta = {"run_id": run_id, "node_id": node_id, "task_id": task_id, "base_version": base_version,
                     "extra": dict(extra or {})}
        self.entries: list[dict] = []
        self.offset = 0
        self.sha = hashlib.sha256()

    def add(self, name: str, t: torch.Tensor | EncodedTensor) -> EncodedTensor:
        enc = t if isinstance(t, EncodedTensor) else self.codec.encode(t)
        self.codec.validate(enc)
        parts = []
        for pname, p in enc.parts.items():
            raw = _to_bytes(p)
            parts.append({"name": pname, "dtype": DTYPE_NAMES[p.dtype], "offset": self.offset, "length": len(raw),
                          "sha256": block_hashes(raw)})
            self.f.write(raw)
            self.sha.update(raw)
            self.offset += len(raw)
        self.entries.append({"name": name, "shape": list(enc.shape), "dtype": enc.dtype, "numel": enc.numel,
                             "parts": parts})
        return enc

    def head(self) -> bytes:
        header = {"format": FORMAT_VERSION, **self.meta, "codec": self.codec.spec, "tensors": self.entries,
                  "payload_bytes": self.offset, "payload_sha256": self.sha.hexdigest(), "hash_block": HASH_BLOCK}
        order = ("format", "run_id", "node_id", "task_id", "base_version", "codec", "extra", "tensors",
                 "payload_bytes", "payload_sha256", "hash_block")
        hbytes = json.dumps({k: header[k] for k in order}, separators=(",", ":"), allow_nan=False,
                            ensure_ascii=False).encode("utf-8")
        return PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(hbytes)) + hbytes

    def pieces(self, size: int = 1 << 20):
        """The whole message: prefix and header, then the payload read back from the file."""
        yield self.head()
        self.f.flush()
        self.f.seek(0)
        while True:
            piece = self.f.read(size)
            if not piece:
                return
            yield piece
