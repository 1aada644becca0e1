"""Pinned outputs of the quantizing codecs: encoded bytes and decoded tensors must never change.

    python -m pytest -q tests/codec/test_codec_reference.py                 # compare with the fixture
    PYTHONPATH=src python tests/codec/test_codec_reference.py --write       # regenerate (only on purpose!)

The fixture `data/quant_reference.json` was written by the codecs as of commit cc3d1b9, before the blocked
fast path existed. Every case hashes the encoded parts (names, dtypes, raw bytes) and the decoded float32
tensor, so any change to rounding, packing, padding or the stochastic-rounding stream fails here.
Stochastic cases encode twice with one codec object to pin that its generator continues across calls.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from trainnet.codec import parse_codec

FIXTURE = Path(__file__).parent / "data" / "quant_reference.json"

# (spec, lengths): lengths straddle blocks, pack widths and (for the large ones) several cache chunks.
SPECS = {
    "int8": [0, 1, 3, 64, 65, 1000, 300_007],
    "q4": [0, 1, 2, 3, 63, 64, 65, 1001, 300_007],
    "q2": [0, 1, 2, 3, 5, 63, 64, 65, 127, 1002, 70_001, 300_007],
    "int8:b3": [1, 7, 1000],
    "q4:b7": [1, 6, 13, 1000],
    "q2:b5": [1, 3, 4, 5, 6, 1003],
    "q2:b100": [99, 100, 101, 4099],
    "q4:b4096": [4095, 4096, 12_289],
    "q2:sr": [1, 5, 64, 65, 1001, 70_001],
    "q4:b7:sr5": [1, 13, 1000],
    "int8:sr3": [3, 1000],
    "topk:0.1:c64+q2": [1, 640, 1000],
    "topk:0.015+q4": [5000],
    "dct16:top3+int8": [100],
}
KINDS = ["gauss", "wide", "steps", "const", "tiny", "big"]


def make_input(kind: str, n: int, seed: int) -> torch.Tensor:
    """A seeded float32 vector of one flavour; 'steps' hits exact rounding ties, 'const' zero scales."""
    g = torch.Generator().manual_seed(seed)
    if kind == "gauss":
        return torch.randn(n, generator=g) * 1e-3
    if kind == "wide":
        return torch.randn(n, generator=g) * 100 + torch.randint(-3, 4, (n,), generator=g) * 1000
    if kind == "steps":  # integers and half-integers: codes land exactly on .5 ties
        return torch.randint(0, 511, (n,), generator=g).float() / 2 - 64
    if kind == "const":  # runs of equal values, some exactly representable in float16, some not
        v = torch.where(torch.rand(n, generator=g) < 0.5, 0.25, 0.1)
        return torch.where(torch.arange(n) % 97 < 40, v, torch.randn(n, generator=g))
    if kind == "tiny":  # float32 subnormals and near-zero block ranges
        return torch.randn(n, generator=g) * 1e-40 + torch.where(torch.arange(n) % 3 == 0, -0.0, 0.0)
    if kind == "big":  # block ranges close to the float16 limit
        return (torch.rand(n, generator=g) * 2 - 1) * 60000
    raise ValueError(kind)


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}:{t.numel()};".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def run_case(spec: str, kind: str, n: int) -> dict[str, str]:
    """Hashes of encode/decode for one case; stochastic codecs encode twice with the same object."""
    codec = parse_codec(spec)
    x = make_input(kind, n, seed=n * 31 + KINDS.index(kind))
    out: dict[str, str] = {}
    for i in range(2 if ":sr" in spec else 1):
        try:
            enc = codec.encode(x)
        except ValueError as exc:  # e.g. a block range beyond float16: the error itself is pinned
            out[f"enc{i}"] = f"ValueError: {exc}"
            continue
        out[f"enc{i}"] = _digest(*enc.parts.values()) + ":" + ",".join(enc.parts)
        out[f"dec{i}"] = _digest(codec.decode(enc))
    return out


def all_cases() -> list[tuple[str, str, int]]:
    return [(s, k, n) for s, lengths in SPECS.items() for n in lengths for k in KINDS
            if n <= 70_001 or k in ("gauss", "steps")]


def _key(spec: str, kind: str, n: int) -> str:
    return f"{spec}|{kind}|{n}"


@pytest.fixture(scope="module")
def reference() -> dict[str, dict[str, str]]:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("spec", list(SPECS))
def test_quantized_codecs_match_pinned_reference(spec: str, reference: dict[str, dict[str, str]]) -> None:
    torch.set_num_threads(1)
    cases = [c for c in all_cases() if c[0] == spec]
    assert cases and all(_key(*c) in reference for c in cases)
    for case in cases:
        assert run_case(*case) == reference[_key(*case)], _key(*case)


def test_fixture_covers_every_case(reference: dict[str, dict[str, str]]) -> None:
    assert set(reference) == {_key(*c) for c in all_cases()}


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: PYTHONPATH=src python tests/codec/test_codec_reference.py --write")
    torch.set_num_threads(1)
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps({_key(*c): run_case(*c) for c in all_cases()}, indent=0, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
