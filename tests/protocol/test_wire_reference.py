"""An independent decoder written from docs/PROTOCOL.md with numpy only, checked against decode_update.

It shares no code with trainnet.codec, so a mismatch means the spec and the implementation disagree.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct

import numpy as np
import pytest
import torch

from trainnet.protocol.wire import decode_update, encode_update

NP = {"uint8": "<u1", "float16": "<f2", "float32": "<f4", "int16": "<i2"}


def bits_unpack(buf: np.ndarray, w: int, m: int) -> np.ndarray:
    stream = np.unpackbits(buf, bitorder="little")[: m * w].reshape(m, w).astype(np.int64)
    return (stream << np.arange(w)).sum(axis=1)


def read(payload: bytes, part: dict) -> np.ndarray:
    raw = payload[part["offset"] : part["offset"] + part["length"]]
    if part["dtype"] == "bfloat16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view("<f4").astype(np.float32)
    return np.frombuffer(raw, NP[part["dtype"]]).astype(np.float64 if part["dtype"] != "uint8" else np.uint8)


def value_stage(stage: str, parts: list, payload: bytes, m: int, default_block: int) -> np.ndarray:
    name, *opts = stage.split(":")
    block = next((int(o[1:]) for o in opts if re.fullmatch(r"b\d+", o)), default_block)
    if "t" in opts:
        block = max(m, 1)
    if name in ("fp32", "fp16", "bf16"):
        return read(payload, parts[0]).astype(np.float64)
    blk = np.arange(m) // block
    if name == "sign":
        neg = bits_unpack(read(payload, parts[0]), 1, m)
        return np.where(neg == 1, -1.0, 1.0) * read(payload, parts[1])[blk]
    b = 8 if name in ("int8", "q8") else int(name[1])
    q = bits_unpack(read(payload, parts[0]), b, m)
    return read(payload, parts[2])[blk] + q * read(payload, parts[1])[blk]


def reference_decode(data: bytes) -> dict[str, np.ndarray]:
    magic, version, flags, hlen = struct.unpack_from("<4sHHI", data)
    assert (magic, version, flags) == (b"TNUP", 2, 0)
    h = json.loads(data[12 : 12 + hlen])
    payload = data[12 + hlen :]
    assert len(payload) == h["payload_bytes"] and hashlib.sha256(payload).hexdigest() == h["payload_sha256"]
    head, *rest = h["codec"].split("+")
    out = {}
    for t in h["tensors"]:
        n, parts = t["numel"], t["parts"]
        hname, *hopts = head.split(":")
        if hname == "topk" or hname.startswith("dct"):
            if hname == "topk":
                chunk = next((int(o[1:]) for o in hopts[1:]), 4096)
                c = max(1, min(chunk, n))
                k = min(c, max(1, math.ceil(float(hopts[0]) * c - 1e-9)))
            else:
                c, k = int(hname[3:]), int(hopts[0][3:])
            nc = -(-n // c)
            idx = bits_unpack(read(payload, parts[0]), max(1, (c - 1).bit_length()), nc * k).reshape(nc, k)
            vals = value_stage(rest[0] if rest else "fp32", parts[1:], payload, nc * k, k).reshape(nc, k)
            rows = np.zeros((nc, c))
            np.put_along_axis(rows, idx, vals, axis=1)
            if hname.startswith("dct"):
                u, i = np.arange(c)[:, None], np.arange(c)[None, :]
                d = np.cos(np.pi * (2 * i + 1) * u / (2 * c)) * np.sqrt(2.0 / c)
                d[0] /= np.sqrt(2.0)
                rows = rows @ d
            flat = rows.reshape(-1)[:n]
        else:
            flat = value_stage(head, parts, payload, n, 64)
        out[t["name"]] = flat.reshape(t["shape"])
    return out


@pytest.mark.parametrize("spec", ["fp32", "fp16", "bf16", "int8", "q4:b48", "q2", "sign", "sign:t", "sign:b5",
                                  "topk:0.015", "topk:0.1:c100+q2", "topk:0.3:c7+sign", "topk:0.05:c1000+bf16",
                                  "dct64:top4+sign", "dct16:top3+q4", "dct8:top8"])
def test_reference_decoder_agrees(spec: str) -> None:
    g = torch.Generator().manual_seed(3)
    ts = {"a": torch.randn(33, 45, generator=g), "b": torch.randn(7, generator=g), "c": torch.tensor(2.5),
          "d": torch.zeros(0)}
    data = encode_update(ts, spec)
    ours = decode_update(data).tensors
    ref = reference_decode(data)
    for k in ts:
        np.testing.assert_allclose(ours[k].double().numpy(), ref[k], rtol=1e-5, atol=1e-5 * float(ts[k].abs().max()
                                   if ts[k].numel() else 1))
