"""Wire format: round trips, metadata, limits and the byte layout."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch

from trainnet.codec import ErrorFeedback, parse_codec
from trainnet.protocol import wire
from trainnet.protocol.wire import (
    WireFormatError,
    WireLimits,
    decode_header,
    decode_update,
    decode_update_encoded,
    encode_update,
    encoded_size_bits_per_param,
)

SPECS = ["fp32", "fp16", "bf16", "int8", "q4", "q2:b32", "sign:t", "topk:0.015", "topk:0.015+q2",
         "topk:0.1:c100+sign", "dct64:top4+sign", "dct64:top4+fp16"]


def params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"emb.weight": torch.randn(97, 40, generator=g) * 1e-2, "ln.bias": torch.randn(40, generator=g),
            "empty": torch.zeros(0, 3), "scalar": torch.tensor(0.5), "blk.w": torch.randn(3, 4, 5, generator=g)}


@pytest.mark.parametrize("spec", SPECS)
def test_roundtrip_equals_codec_decode(spec: str) -> None:
    ts = params()
    data = encode_update(ts, spec, run_id="run-1", node_id="node-ä", task_id="t7", base_version=12,
                         extra={"tokens": 4096, "note": [1, "x"]})
    upd = decode_update(data)
    h = upd.header
    assert (h.run_id, h.node_id, h.task_id, h.base_version, h.codec) == ("run-1", "node-ä", "t7", 12, spec)
    assert h.extra == {"tokens": 4096, "note": [1, "x"]} and h.format_version == 2
    assert [(t.name, t.shape, t.numel) for t in h.tensors] == [(k, tuple(v.shape), v.numel()) for k, v in ts.items()]
    assert h.payload_sha256 == hashlib.sha256(data[12 + struct.unpack_from("<I", data, 8)[0]:]).hexdigest()
    c = parse_codec(spec)
    for k, v in ts.items():
        assert upd.tensors[k].dtype == torch.float32
        expect = c.decode(c.encode(v)) if not c.spec.endswith(":sr") else None
        assert torch.equal(upd.tensors[k], expect)
    if spec == "fp32":
        assert all(torch.equal(upd.tensors[k], v) for k, v in ts.items())


def test_layout_prefix_and_header() -> None:
    data = encode_update({"a": torch.arange(4.0)}, "fp16")
    magic, version, flags, hlen = struct.unpack_from("<4sHHI", data)
    assert (magic, version, flags) == (b"TNUP", 2, 0)
    header = json.loads(data[12 : 12 + hlen])
    raw = torch.arange(4.0).half().numpy().astype("<f2").tobytes()
    assert header["tensors"][0]["parts"] == [{"name": "v", "dtype": "float16", "offset": 0, "length": 8,
                                              "sha256": [hashlib.sha256(raw).hexdigest()]}]
    assert header["hash_block"] == 1 << 20
    assert data[12 + hlen :] == torch.arange(4.0).half().numpy().astype("<f2").tobytes()
    assert header["payload_bytes"] == 8


def test_error_feedback_output_is_sent_as_is() -> None:
    ef = ErrorFeedback("q2:sr")
    encoded, sent = ef.compress(params())
    upd = decode_update(encode_update(encoded, "q2:sr", base_version=1))
    assert all(torch.equal(upd.tensors[k], sent[k]) for k in sent)
    with pytest.raises(ValueError, match="encoded with"):
        encode_update(encoded, "q4")


def test_header_only_and_encoded_views() -> None:
    data = encode_update(params(), "topk:0.015+q2", task_id="x")
    h = decode_header(data)
    assert h.task_id == "x" and h.total_numel == sum(v.numel() for v in params().values())
    h2, enc = decode_update_encoded(data)
    assert h2 == h and set(enc) == set(params()) and enc["ln.bias"].parts["idx"].dtype == torch.uint8
    bits = encoded_size_bits_per_param(data)
    assert bits == pytest.approx(8 * len(data) / h.total_numel)
    assert encoded_size_bits_per_param(h, total_bytes=len(data)) == bits


def test_bits_per_param_of_large_update_is_tight() -> None:
    t = {"w": torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))}
    bits = encoded_size_bits_per_param(encode_update(t, "topk:0.015+q2"))
    assert bits < 0.228  # 0.2197 payload + the header (format 2 adds a sha256 per MiB of each part)


@pytest.mark.parametrize(
    "limits,match",
    [(WireLimits(max_total_bytes=100), "max_total_bytes"), (WireLimits(max_header_bytes=64), "header length"),
     (WireLimits(max_tensors=2), "at most 2"), (WireLimits(max_elements_per_tensor=1000), "max_elements"),
     (WireLimits(max_total_elements=3900), "max_total_elements"), (WireLimits(max_string_len=3), "run_id"),
     (WireLimits(allowed_codecs=("topk:0.015+q2",)), "allowed")],
)
def test_limits_are_enforced(limits: WireLimits, match: str) -> None:
    data = encode_update(params(), "q4", run_id="run-1")
    decode_update(data, limits=WireLimits(allowed_codecs=("q4",)))
    with pytest.raises(WireFormatError, match=match):
        decode_update(data, limits=limits)


def test_encode_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="codec spec"):
        encode_update({"a": torch.ones(2)}, "nope")
    with pytest.raises(ValueError, match="base_version"):
        encode_update({"a": torch.ones(2)}, base_version=-1)
    with pytest.raises(ValueError, match="NaN"):
        encode_update({"a": torch.tensor([float("inf")])})
    with pytest.raises(ValueError, match="JSON"):
        encode_update({"a": torch.ones(2)}, extra={"x": object()})
    with pytest.raises(ValueError, match="JSON"):
        encode_update({"a": torch.ones(2)}, extra={"x": float("nan")})


def test_wire_error_is_value_error() -> None:
    assert issubclass(WireFormatError, ValueError)
    assert wire.MAGIC == b"TNUP"


def test_codec_object_keeps_its_stochastic_stream() -> None:
    t = {"w": torch.linspace(-1, 1, 512)}
    c = parse_codec("q2:sr")
    a, b = encode_update(t, c), encode_update(t, c)
    assert a != b  # the generator advanced between messages
    assert encode_update(t, "q2:sr") == encode_update(t, "q2:sr")  # fresh codec: same seed, same stream
    assert decode_update(a).header.codec == "q2:sr"


@pytest.mark.parametrize("name", ["", "a\x00b", 3])
def test_encode_rejects_bad_names(name: object) -> None:
    with pytest.raises(ValueError, match="tensor name"):
        encode_update({name: torch.ones(2)})  # type: ignore[dict-item]
