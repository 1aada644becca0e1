"""Malformed and malicious updates: every one raises WireFormatError, quickly, and nothing else."""

from __future__ import annotations

import hashlib
import json
import struct
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainnet.protocol.wire import WireFormatError, block_hashes, decode_header, decode_update, encode_update

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
G = torch.Generator().manual_seed(0)
VALID = {
    spec: encode_update({"w": torch.randn(30, 20, generator=G), "b": torch.randn(5, generator=G)}, spec,
                        run_id="r", base_version=2)
    for spec in ["fp32", "q4", "topk:0.05:c100+q2", "dct16:top3+sign", "bf16"]
}


def split(data: bytes) -> tuple[dict, bytes]:
    hlen = struct.unpack_from("<I", data, 8)[0]
    return json.loads(data[12 : 12 + hlen]), data[12 + hlen :]


def frame(header: dict | str, payload: bytes, fix_hash: bool = True, prefix: tuple = (b"TNUP", 2, 0)) -> bytes:
    """Assemble a message; by default with a correct sha256, so deeper checks are reached."""
    if isinstance(header, dict) and fix_hash:
        header = {**header, "payload_sha256": hashlib.sha256(payload).hexdigest()}
        for t in header.get("tensors") if isinstance(header.get("tensors"), list) else []:
            for p in t.get("parts", []) if isinstance(t, dict) and isinstance(t.get("parts"), list) else []:
                if isinstance(p, dict) and isinstance(p.get("offset"), int) and isinstance(p.get("length"), int):
                    p["sha256"] = block_hashes(payload[p["offset"]:p["offset"] + p["length"]])
    text = header if isinstance(header, str) else json.dumps(header)
    hb = text.encode("utf-8", "surrogatepass")
    return struct.pack("<4sHHI", *prefix, len(hb)) + hb + payload


def rejects(data: object, match: str | None = None) -> None:
    t = time.perf_counter()
    with pytest.raises(WireFormatError, match=match):
        decode_update(data)  # type: ignore[arg-type]
    assert time.perf_counter() - t < 2.0


@SETTINGS
@given(spec=st.sampled_from(sorted(VALID)), data=st.data())
def test_random_byte_flips_rejected(spec: str, data: st.DataObject) -> None:
    msg = bytearray(VALID[spec])
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(msg) - 1), st.integers(1, 255)), min_size=1,
                               max_size=4))
    for pos, x in flips:
        msg[pos] ^= x
    try:
        upd = decode_update(bytes(msg))
    except WireFormatError:
        return
    # A flip inside JSON string contents or insignificant whitespace can leave a valid message; it must
    # then still be a fully consistent update.
    assert set(upd.tensors) <= {"w", "b"} | {t.name for t in upd.header.tensors}
    assert all(torch.isfinite(v).all() for v in upd.tensors.values())


@SETTINGS
@given(spec=st.sampled_from(sorted(VALID)), data=st.data())
def test_truncation_and_extension_rejected(spec: str, data: st.DataObject) -> None:
    msg = VALID[spec]
    cut = data.draw(st.integers(0, len(msg) - 1))
    rejects(msg[:cut])
    rejects(msg + data.draw(st.binary(min_size=1, max_size=50)))


@SETTINGS
@given(junk=st.binary(max_size=300))
def test_garbage_rejected(junk: bytes) -> None:
    rejects(junk)
    rejects(b"TNUP\x02\x00\x00\x00" + struct.pack("<I", len(junk)) + junk)


@SETTINGS
@given(header=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=20))
def test_arbitrary_json_headers_rejected(header: object) -> None:
    rejects(frame(json.dumps(header), b""))


def _mutated(spec: str, **changes) -> bytes:
    h, payload = split(VALID[spec])
    t0 = h["tensors"][0]
    for key, val in changes.items():
        if key.startswith("t0."):
            t0[key[3:]] = val
        elif key.startswith("p0."):
            t0["parts"][0][key[3:]] = val
        else:
            h[key] = val
    return frame(h, payload)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"t0.shape": [10**12, 10**12], "t0.numel": 10**24}, "shape entry"),
        ({"t0.shape": [2**20, 2**20], "t0.numel": 2**40}, "max_elements"),
        ({"t0.shape": [-30, -20], "t0.numel": 600}, "shape entry"),
        ({"t0.shape": [20, 30, 1, 1, 1, 1, 1, 1, 1]}, "shape must be"),
        ({"t0.shape": [30, 21]}, "numel"),
        ({"t0.shape": [30.0, 20]}, "shape entry"),
        ({"t0.shape": [True, 600], "t0.numel": 600}, "shape entry"),
        ({"t0.numel": 601}, "numel"),
        ({"t0.dtype": "int64"}, "dtype"),
        ({"p0.length": -4}, "length"),
        ({"p0.length": 10**30}, "length"),
        ({"p0.offset": 1}, "offset"),
        ({"p0.dtype": "float64"}, "dtype"),
        ({"p0.name": "x"}, "part 0"),
        ({"codec": "q5"}, "codec"),
        ({"codec": "topk:0.05:c100+q2:b64:b64"}, "codec"),
        ({"codec": "fp16"}, "fp16"),
        ({"codec": 3}, "codec"),
        ({"base_version": -1}, "base_version"),
        ({"base_version": 2**64}, "base_version"),
        ({"run_id": ["r"]}, "run_id"),
        ({"run_id": "a\nb"}, "control"),
        ({"format": 1}, "format"),
        ({"hash_block": 4096}, "hash_block"),
        ({"extra": []}, "extra"),
        ({"tensors": {}}, "tensors"),
        ({"payload_bytes": 1}, "payload_bytes"),
        ({"unexpected": 1}, "keys"),
    ],
)
def test_malicious_headers_rejected(changes: dict, match: str) -> None:
    rejects(_mutated("q4", **changes), match)


def test_duplicate_names_keys_and_deep_nesting() -> None:
    h, payload = split(VALID["fp32"])
    h["tensors"][1]["name"] = "w"
    h["tensors"][1]["parts"][0]["offset"] = h["tensors"][0]["parts"][0]["length"]
    rejects(frame(h, payload), "duplicate tensor")
    text = json.dumps(split(VALID["fp32"])[0])
    rejects(frame(text[:-1] + ',"run_id":"x"}', split(VALID["fp32"])[1]), "duplicate keys")
    rejects(frame("[" * 100000 + "]" * 100000, b""), "JSON")
    rejects(frame('{"a": NaN}', b""), "NaN")
    rejects(frame('{"a": ' + "9" * 5000 + "}", b""), "JSON")
    rejects(frame(b"\xff\xfe".decode("latin-1"), b""))
    rejects(frame("\ud800", b""), "UTF-8")


def test_framing_errors() -> None:
    msg = VALID["q4"]
    rejects(b"XXXX" + msg[4:], "magic")
    rejects(msg[:4] + b"\x01\x00" + msg[6:], "version")
    rejects(msg[:6] + b"\x01\x00" + msg[8:], "flags")
    rejects(msg[:8] + struct.pack("<I", 2**32 - 1) + msg[12:], "header length")
    rejects(msg[:8] + struct.pack("<I", 3) + msg[12:], "JSON")
    rejects(msg[:11], "prefix")
    rejects("not bytes", "bytes")
    h, payload = split(msg)
    rejects(frame(h, payload, fix_hash=False)[:-1] + bytes([payload[-1] ^ 1]), "sha256")
    rejects(frame({**h, "payload_sha256": "A" * 64}, payload, fix_hash=False), "sha256")


def _set_part(spec: str, tensor: int, part: str, value: bytes) -> bytes:
    h, payload = split(VALID[spec])
    p = next(p for p in h["tensors"][tensor]["parts"] if p["name"] == part)
    assert len(value) == p["length"]
    payload = payload[: p["offset"]] + value + payload[p["offset"] + p["length"] :]
    return frame(h, payload)


def test_out_of_range_and_unsorted_indices() -> None:
    # topk c100 k=5, 7-bit offsets: 30 codes per 20x30 tensor... chunk 100, 6 chunks x 5 = 30 codes.
    from trainnet.codec.bits import pack_bits

    bad = pack_bits(torch.tensor([120, 1, 2, 3, 4] + [0, 1, 2, 3, 4] * 5), 7).numpy().tobytes()
    rejects(_set_part("topk:0.05:c100+q2", 0, "idx", bad), "out of range")
    dup = pack_bits(torch.tensor([1, 1, 2, 3, 4] + [0, 1, 2, 3, 4] * 5), 7).numpy().tobytes()
    rejects(_set_part("topk:0.05:c100+q2", 0, "idx", dup), "increasing")
    rev = pack_bits(torch.tensor([4, 3, 2, 1, 0] * 6), 7).numpy().tobytes()
    rejects(_set_part("topk:0.05:c100+q2", 0, "idx", rev), "increasing")


def test_nan_inf_in_float_parts_and_decoded_result() -> None:
    nan16 = torch.tensor([float("nan")], dtype=torch.float16).view(torch.int16).numpy().tobytes()
    h, payload = split(VALID["q4"])
    scale = next(p for p in h["tensors"][0]["parts"] if p["name"] == "scale")
    rejects(frame(h, payload[: scale["offset"]] + nan16 + payload[scale["offset"] + 2 :]), "NaN")
    neg = torch.tensor([-1.0], dtype=torch.float16).view(torch.int16).numpy().tobytes()
    rejects(frame(h, payload[: scale["offset"]] + neg + payload[scale["offset"] + 2 :]), "negative scale")
    h, payload = split(VALID["fp32"])
    inf = struct.pack("<f", float("inf"))
    rejects(frame(h, inf + payload[4:]), "NaN or Inf")
    # Finite float32 coefficients whose inverse DCT overflows: the decoded tensor itself is checked.
    big = torch.full((4,), 3e38).numpy().tobytes()
    data = encode_update({"w": torch.randn(4, generator=G)}, "dct4:top4")
    h, payload = split(data)
    rejects(frame(h, payload[:1] + big), "decoded")


def test_header_only_decode_also_validates() -> None:
    with pytest.raises(WireFormatError, match="sha256"):
        h, payload = split(VALID["q4"])
        decode_header(frame(h, payload, fix_hash=False)[:-1] + b"\x00")
    assert decode_header(VALID["q4"]).codec == "q4"


def _leaves(obj: object, path: tuple = ()) -> list[tuple]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _leaves(v, (*path, k))] + [path]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _leaves(v, (*path, i))] + [path]
    return [path]


JSON_VALUES = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(
    max_size=20) | st.lists(st.integers(-3, 3), max_size=3) | st.dictionaries(st.text(max_size=5), st.none(),
                                                                              max_size=2)


@SETTINGS
@given(spec=st.sampled_from(sorted(VALID)), data=st.data())
def test_structured_header_mutations_rejected_cleanly(spec: str, data: st.DataObject) -> None:
    """Replace one JSON node of a valid header (hash kept correct) with any JSON value."""
    h, payload = split(VALID[spec])
    path = data.draw(st.sampled_from([p for p in _leaves(h) if p]))
    value = data.draw(JSON_VALUES)
    node = h
    for key in path[:-1]:
        node = node[key]
    original = node[path[-1]]
    node[path[-1]] = value
    msg = frame(h, payload)
    if value == original and type(value) is type(original):
        decode_update(msg)
        return
    try:
        decode_update(msg)
    except WireFormatError as exc:
        # Every rejection comes from an explicit check, not from the catch-all guard.
        assert "malformed update (" not in str(exc), str(exc)
        return
    # Only free-form fields may change without breaking the message (frame() re-fixes the hash).
    assert path[0] in ("run_id", "node_id", "task_id", "extra", "base_version", "payload_sha256") or \
        "sha256" in path or (
        path[-1] == "name" and path[-3] == "tensors")
