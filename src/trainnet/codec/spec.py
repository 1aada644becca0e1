"""Parse codec spec strings into Codec objects.

    parse_codec("q4:b64")            parse_codec("topk:0.015:c4096+q2")      parse_codec("dct64:top4+sign")

Grammar (all lowercase, no spaces; defaults in brackets):
    spec    := value | sparse ["+" value]
    value   := "fp32" | "fp16" | "bf16"
             | ("int8" | "q8" | "q4" | "q2") [":b" INT] [":sr" [INT]]   block [64 dense / k sparse], seed [0]
             | "sign" [":b" INT | ":t"]                                  block [64 dense / k sparse]; t = per tensor
    sparse  := "topk:" FRACTION [":c" INT]                               chunk [4096], 0 < FRACTION <= 1
             | "dct" INT ":top" INT                                      chunk length, kept coefficients
A sparse codec without a value stage stores its values as fp32. Unknown or malformed specs raise ValueError.
"""

from __future__ import annotations

import re

from trainnet.codec.base import Codec
from trainnet.codec.codecs import DCTCodec, DenseCodec, TopKCodec
from trainnet.codec.values import FloatValues, QuantValues, SignValues, ValueCodec

MAX_SPEC_LEN = 128
MAX_BLOCK = 1 << 20
MAX_CHUNK = 1 << 16
MAX_DCT = 256  # decode costs 2*N flops per parameter; bound it
MAX_SEED = (1 << 63) - 1
TOPK_DEFAULT_CHUNK = 4096

_INT = r"[1-9][0-9]{0,18}"
_FRACTION = re.compile(r"^(?:0?\.[0-9]{1,12}|1(?:\.0{1,12})?)$")


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"invalid codec spec {spec!r}: {why}")


def _int_opt(spec: str, opt: str, prefix: str, lo: int, hi: int) -> int:
    m = re.fullmatch(re.escape(prefix) + f"({_INT})", opt)
    if not m:
        raise _bad(spec, f"option {opt!r} should be {prefix}<positive integer>")
    v = int(m.group(1))
    if not lo <= v <= hi:
        raise _bad(spec, f"option {opt!r} out of range [{lo}, {hi}]")
    return v


def _parse_value(spec: str, stage: str) -> ValueCodec:
    name, *opts = stage.split(":")
    if len(set(o[:1] for o in opts)) != len(opts) or any(not o for o in opts):
        raise _bad(spec, f"empty or repeated options in {stage!r}")
    if name in FloatValues.NAMES:
        if opts:
            raise _bad(spec, f"{name} takes no options")
        return FloatValues(name)
    if name in ("int8", "q8", "q4", "q2"):
        bits = 8 if name in ("int8", "q8") else int(name[1])
        block, stochastic, seed = None, False, 0
        for o in opts:
            if o.startswith("b"):
                block = _int_opt(spec, o, "b", 1, MAX_BLOCK)
            elif o == "sr":
                stochastic = True
            elif o.startswith("sr"):
                stochastic, seed = True, _int_opt(spec, o, "sr", 1, MAX_SEED)
            else:
                raise _bad(spec, f"unknown option {o!r} for {name}")
        return QuantValues(bits, block, stochastic, seed)
    if name == "sign":
        if len(opts) > 1:
            raise _bad(spec, "sign takes one option: b<block> or t")
        if not opts:
            return SignValues()
        if opts[0] == "t":
            return SignValues(per_tensor=True)
        return SignValues(block=_int_opt(spec, opts[0], "b", 1, MAX_BLOCK))
    raise _bad(spec, f"unknown codec {name!r}")


def parse_codec(spec: str) -> Codec:
    """Build the Codec named by `spec` (see module docstring for the grammar). Raises ValueError."""
    if not isinstance(spec, str):
        raise ValueError(f"codec spec must be a string, got {type(spec).__name__}")
    if not spec or len(spec) > MAX_SPEC_LEN or not re.fullmatch(r"[a-z0-9.:+]+", spec):
        raise _bad(spec[:MAX_SPEC_LEN], "empty, too long or contains characters outside [a-z0-9.:+]")
    stages = spec.split("+")
    if len(stages) > 2 or not all(stages):
        raise _bad(spec, "at most two '+'-separated stages")
    head, *rest = stages
    name, *opts = head.split(":")
    if name == "topk":
        if not opts or not _FRACTION.match(opts[0]):
            raise _bad(spec, "topk needs a fraction in (0, 1], e.g. topk:0.015")
        fraction = float(opts[0])
        if not 0.0 < fraction <= 1.0:
            raise _bad(spec, "topk fraction must be in (0, 1]")
        chunk = TOPK_DEFAULT_CHUNK
        if len(opts) > 2:
            raise _bad(spec, "topk takes a fraction and an optional c<chunk>")
        if len(opts) == 2:
            chunk = _int_opt(spec, opts[1], "c", 1, MAX_CHUNK)
        values = _parse_value(spec, rest[0]) if rest else FloatValues("fp32")
        frac_txt = format(fraction, ".12f").rstrip("0").rstrip(".")
        canon = f"topk:{frac_txt}" + (f":c{chunk}" if chunk != TOPK_DEFAULT_CHUNK else "")
        return TopKCodec(fraction, chunk, values, canon + (f"+{values.spec}" if rest else ""))
    m = re.fullmatch(f"dct({_INT})", name)
    if m:
        n = int(m.group(1))
        if not 2 <= n <= MAX_DCT:
            raise _bad(spec, f"dct chunk length must be in [2, {MAX_DCT}]")
        if len(opts) != 1:
            raise _bad(spec, "dct needs exactly one option top<k>, e.g. dct64:top4")
        k = _int_opt(spec, opts[0], "top", 1, n)
        values = _parse_value(spec, rest[0]) if rest else FloatValues("fp32")
        return DCTCodec(n, k, values, f"dct{n}:top{k}" + (f"+{values.spec}" if rest else ""))
    if rest:
        raise _bad(spec, "only topk and dct codecs take a '+' value stage")
    return DenseCodec(_parse_value(spec, head))
