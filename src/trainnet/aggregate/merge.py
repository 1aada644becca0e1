"""One aggregator shard's part of a merge job: validate and measure (stats), or aggregate, step and publish
(apply) its range of the flat parameter vector, chunk by chunk.

    env = ShardEnv(blobs, layout, limits, run_id, init_params=lambda: params_of(build_model(...)))
    result = run_merge_task(task["spec"], env)     # JSON-able; the control plane collects one per shard

Memory: O(n x chunk) for the n updates of a merge (chunk ~ 2^24 / n elements), plus a few chunk-sized arrays;
nothing of the model is held whole (the dense rules are the exception: consensus/plan.py). Every number that
decides something is computed the same way whatever the number of shards: per-block partial sums on a global
chunk grid, so 1 shard and N shards produce bit-identical versions (tests/aggregate).

Per version v and shard r the shard writes its exact parameters and outer momentum (agg/r/v.theta, .mom) and
the published reconstruction of its range (agg/r/v.pub); workers download the published delta (q4/int8 of
the difference to the previous reconstruction: coordinator-side error feedback, rounding never accumulates)
and, every `full_every` versions, full checkpoint chunks (bf16; the first and the final version exact fp32).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from trainnet.aggregate import keys
from trainnet.aggregate.arrays import F32Sink, Spool, bf16_bytes, f32_bytes, read_f32
from trainnet.aggregate.layout import ParamDict, ParamLayout, chunk_size, chunks
from trainnet.aggregate.publish import Reconstructor
from trainnet.aggregate.shard_state import load_sources, write_sums
from trainnet.aggregate.updates import Invalid, OpenUpdate
from trainnet.codec.spec import parse_codec
from trainnet.consensus.robust import parse_rule
from trainnet.consensus.robust_common import is_uniform
from trainnet.consensus.robust_coord import median_block, trimmed_block
from trainnet.protocol.wire import WireLimits, WireWriter
from trainnet.store.blobs import BlobNotFound, BlobStore


class MergeError(RuntimeError):
    """The shard cannot finish this task (its own state is missing or corrupt); the task is retried."""


class _SliceCache:
    """Slices of published reconstructions, kept between merges in this process: a version's `pub` array is
    written once and never changes, and consecutive merges re-base against mostly the same few versions (each
    read was a request to the object store). Bounded by bytes; least recently used first out."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.nbytes = max_bytes, 0
        self.items: OrderedDict[tuple[str, int, int], torch.Tensor] = OrderedDict()

    def get(self, key: str, a: int, b: int) -> torch.Tensor | None:
        x = self.items.get((key, a, b))
        if x is not None:
            self.items.move_to_end((key, a, b))
        return x

    def put(self, key: str, a: int, b: int, x: torch.Tensor) -> None:
        size = 4 * x.numel()
        if size > self.max_bytes // 4:
            return  # a large model's chunk: reading it again costs little next to its size
        self.items[(key, a, b)] = x
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self.items.popitem(last=False)
            self.nbytes -= 4 * old.numel()


OPEN_THREADS = 8


@dataclass
class ShardEnv:
    blobs: BlobStore
    layout: ParamLayout
    limits: WireLimits
    run_id: str
    init_params: Callable[[], ParamDict] | None = None  # the model's initial weights (the init job)
    budget_elems: int = 1 << 24
    stats: dict[str, float] = field(default_factory=dict)  # bytes read, seconds: for benchmarks
    # One per run and process: keys name a version's array within this run's store only.
    pub_slices: _SliceCache = field(default_factory=lambda: _SliceCache(64 << 20))


def run_merge_task(spec: dict[str, Any], env: ShardEnv) -> dict[str, Any]:
    if spec["kind"] == "init":
        return _init(spec, env)
    if spec["phase"] == "stats":
        return _stats(spec, env)
    return _apply(spec, env)


# ------------------------------------------------------------------ shared
class _Bases:
    """The published reconstructions a chunk's stale updates are re-based against (endpoint mode)."""

    def __init__(self, spec: dict[str, Any], env: ShardEnv) -> None:
        self.spec, self.env = spec, env
        self.on = spec["stale_mode"] == "endpoint"
        self.cache: dict[int, torch.Tensor] = {}

    def load(self, a: int, b: int, versions: set[int]) -> None:
        s, lo = self.spec, self.spec["lo"]
        self.cache = {}
        if not self.on:
            return
        for v in versions | {s["version_from"]}:
            key = keys.agg(s["shard"], v, "pub")
            x = self.env.pub_slices.get(key, a - lo, b - lo)
            if x is None:
                try:
                    x = read_f32(self.env.blobs, key, a - lo, b - lo)
                except BlobNotFound:
                    continue  # pruned: updates based on it are too stale (see rebase)
                self.env.pub_slices.put(key, a - lo, b - lo, x)
            self.cache[v] = x

    def rebase(self, x: torch.Tensor, base: int) -> torch.Tensor:
        """Δ − (θ̃_base − θ̃_now): the step from today's model to the worker's endpoint (docs/ALGORITHM.md)."""
        now = self.spec["version_from"]
        if not self.on or base == now:
            return x
        if base not in self.cache:
            raise Invalid("too_stale", f"version {base} is no longer kept for re-basing")
        return x - (self.cache[base] - self.cache[now])


def _open_all(spec: dict[str, Any], env: ShardEnv, which: list[int]) -> tuple[dict[int, OpenUpdate],
                                                                               dict[int, Invalid]]:
    def one(i: int) -> OpenUpdate | Invalid:
        try:
            return OpenUpdate.open(env.blobs, spec["updates"][i], env.layout, env.limits, env.run_id)
        except Invalid as exc:
            return exc

    # Opening is a few object-store requests per update, waiting on the network: they overlap in a few threads
    # (a merge of a small model's updates was mostly this wait).
    if len(which) > 1:
        with ThreadPoolExecutor(max_workers=min(OPEN_THREADS, len(which)), thread_name_prefix="open") as ex:
            results = list(ex.map(one, which))
    else:
        results = [one(i) for i in which]
    opened, bad = {}, {}
    for i, r in zip(which, results, strict=True):
        if isinstance(r, Invalid):
            bad[i] = r
        else:
            opened[i] = r
    return opened, bad


# ------------------------------------------------------------------ stats
def _stats(spec: dict[str, Any], env: ShardEnv) -> dict[str, Any]:
    lo, hi, block = spec["lo"], spec["hi"], spec["block"]
    n = len(spec["updates"])
    b0 = lo // block
    nblocks = max(0, -(-hi // block) - b0)
    out: list[dict[str, Any]] = [{"ok": True, "sq": [0.0] * nblocks} for _ in range(n)]
    opened, bad = _open_all(spec, env, list(range(n)))
    for i, exc in bad.items():
        out[i] = {"ok": False, "reason": exc.reason, "detail": exc.detail, "sq": []}
    bases = _Bases(spec, env)
    c = chunk_size(max(1, len(opened)), block, env.budget_elems)
    for a, b in chunks(lo, hi, c):
        live = [i for i in opened if out[i]["ok"]]
        bases.load(a, b, {spec["updates"][i]["base_version"] for i in live})
        blk = a // block - b0
        for i in live:
            try:
                x = bases.rebase(opened[i].flat(a, b), spec["updates"][i]["base_version"])
            except Invalid as exc:
                out[i] = {"ok": False, "reason": exc.reason, "detail": exc.detail, "sq": []}
                continue
            out[i]["sq"][blk] += float((x.double() * x.double()).sum())
    env.stats["bytes_read"] = env.stats.get("bytes_read", 0) + sum(u.msg.bytes_read for u in opened.values())
    return {"shard": spec["shard"], "updates": out}


# ------------------------------------------------------------------ apply
def _rule_chunk(u: torch.Tensor, plan: dict[str, Any]) -> torch.Tensor:
    """A decomposable plan on one chunk of the n stacked (re-based) updates, as consensus/robust_*.py do it."""
    w = torch.tensor(plan["weights"], dtype=torch.float64)
    scale = torch.tensor(plan["row_scale"], dtype=torch.float64)
    if plan["inner"] == "mean":
        return (w * scale).to(torch.float32) @ u
    block = u * scale.to(torch.float32).unsqueeze(1)
    uniform = is_uniform(w)
    if plan["inner"] == "median":
        return median_block(block, w, uniform)
    return trimmed_block(block, w, uniform, int(plan["beta"] * u.shape[0]))


class _Publisher:
    """Publishes a shard's new reconstruction on the PUB_CHUNK grid: the delta message, the full chunks and the
    .pub array, in one pass; `add` takes consecutive pieces (new exact params, previous reconstruction)."""

    def __init__(self, spec: dict[str, Any], env: ShardEnv) -> None:
        p = spec["publish"]
        self.spec, self.env = spec, env
        self.exact, self.full = bool(p["exact"]), bool(p["full"])
        self.codec = None if self.exact else parse_codec(p["codec"])
        self.pub = F32Sink(env.blobs, keys.agg(spec["shard"], spec["version_to"], "pub"))
        self.delta_file = None if self.exact else tempfile.TemporaryFile()
        self.writer = None if self.exact else WireWriter(self.delta_file, self.codec, run_id=spec["run_id"],
                                                          base_version=max(0, spec["version_from"]),
                                                          extra={"version": spec["version_to"]})
        self.chunks: list[dict[str, Any]] = []
        self.buf_new: list[torch.Tensor] = []
        self.buf_old: list[torch.Tensor] = []
        self.start = spec["lo"]
        self.pos = spec["lo"]

    def add(self, new: torch.Tensor, old: torch.Tensor | None) -> None:
        self.buf_new.append(new)
        if old is not None:
            self.buf_old.append(old)
        self.pos += new.numel()
        if self.pos % self.spec["block"] == 0 or self.pos == self.spec["hi"]:
            self._flush()

    def _flush(self) -> None:
        a, b = self.start, self.pos
        new = torch.cat(self.buf_new)
        if self.exact:
            pub, raw, dtype = new, f32_bytes(new), "float32"
        else:
            old = torch.cat(self.buf_old)
            enc = self.writer.add(f"{a:012d}", new - old)
            pub = old + self.codec.decode(enc, validate=False).reshape(-1)
            if self.full:  # an anchor: the reconstruction is rounded to what the bf16 checkpoint holds
                pub = pub.to(torch.bfloat16).to(torch.float32)
            raw, dtype = bf16_bytes(pub), "bfloat16"
        if not bool(torch.isfinite(pub).all()):
            raise MergeError(f"non-finite published parameters in [{a}, {b})")
        self.pub.write_tensor(pub)
        if self.full:  # content-addressed: the key is the hash, so an unchanged chunk is stored once
            sha = hashlib.sha256(raw).hexdigest()
            key = keys.chunk(sha)
            if self.env.blobs.size(key) != len(raw):
                self.env.blobs.put(key, raw)
            self.chunks.append({"lo": a, "hi": b, "dtype": dtype, "key": key, "sha256": sha, "nbytes": len(raw)})
        self.buf_new, self.buf_old, self.start = [], [], b

    def close(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pub": self.pub.close(), "full": self.chunks if self.full else None, "delta": None}
        if self.writer is not None:
            sink = Spool(self.env.blobs, keys.delta(self.spec["version_to"], self.spec["shard"]))
            for piece in self.writer.pieces():
                sink.write(piece)
            self.delta_file.close()
            out["delta"] = sink.close() | {"codec": self.codec.spec, "lo": self.spec["lo"], "hi": self.spec["hi"]}
        return out


def _apply(spec: dict[str, Any], env: ShardEnv) -> dict[str, Any]:
    lo, hi, shard = spec["lo"], spec["hi"], spec["shard"]
    plan = spec["plan"] or {"dense": False, "inner": "mean", "beta": 0.0, "valid": [], "row_scale": [],
                            "weights": []}
    valid = plan["valid"]
    opened, bad = _open_all(spec, env, valid)
    if bad:  # the stats phase accepted them: something changed underneath (a blob overwritten or lost)
        raise MergeError(f"updates failed validation after the stats phase: "
                         f"{ {spec['updates'][i]['task_id']: e.reason for i, e in bad.items()} }")
    try:  # version_from's state, checked against its checksums, with fallbacks (shard_state.py)
        src = load_sources(env.blobs, spec, lambda: _rebuild_pub(spec, env))
    except LookupError as exc:
        raise MergeError(str(exc)) from None
    outer, damping = spec["outer"], float(spec["damping"])
    lr, mu, nesterov = float(outer["lr"]), float(outer["momentum"]), bool(outer["nesterov"])
    theta_out = F32Sink(env.blobs, keys.agg(shard, spec["version_to"], "theta"))
    mom_out = F32Sink(env.blobs, keys.agg(shard, spec["version_to"], "mom"))
    # Without a usable published state of version_from there is nothing to publish a delta against: this
    # version goes out exactly, in full (workers download it whole).
    pub = _Publisher(spec if src.pub is not None else spec | {"publish": spec["publish"] | {"exact": True,
                                                                                            "full": True}}, env)
    bases = _Bases(spec, env)
    base_of = {i: spec["updates"][i]["base_version"] for i in valid}
    dense = _dense_merge(spec, env, opened, bases, plan) if plan["dense"] and valid else None
    c = chunk_size(max(1, len(valid)), spec["block"], env.budget_elems)
    for a, b in chunks(lo, hi, c):
        theta = src.read(env.blobs, src.theta, a - lo, b - lo)
        mom = src.read(env.blobs, src.mom, a - lo, b - lo) if src.mom is not None else torch.zeros(b - a)
        if spec["kind"] == "final" or not valid:
            new = theta
        else:
            if dense is not None:
                merged = dense[a - lo:b - lo]
            else:
                bases.load(a, b, set(base_of.values()))
                rows = torch.stack([bases.rebase(opened[i].flat(a, b), base_of[i]) for i in valid])
                merged = _rule_chunk(rows, plan)
            merged = merged * damping
            if mu == 0:
                new = theta - lr * merged
            else:  # torch.optim.SGD's rule (consensus/outer.py); a zero buffer makes the first step exact
                mom = mom.mul_(mu).add_(merged)
                direction = merged + mu * mom if nesterov else mom
                new = theta - lr * direction
        if not bool(torch.isfinite(new).all()):
            raise MergeError(f"non-finite parameters after the outer step in [{a}, {b})")
        theta_out.write_tensor(new)
        mom_out.write_tensor(mom)
        old = None if pub.exact else src.read(env.blobs, src.pub, a - lo, b - lo)
        pub.add(new, old)
    out = {"shard": shard, "lo": lo, "hi": hi, "theta": theta_out.close(), "mom": mom_out.close()}
    out |= pub.close()
    write_sums(env.blobs, shard, spec["version_to"], {w: out[w] for w in ("theta", "mom", "pub")})
    return out | ({"recovered": src.recovered} if src.recovered else {})


def _rebuild_pub(spec: dict[str, Any], env: ShardEnv) -> torch.Tensor:
    """This shard's range of the published reconstruction of version_from, from the version manifests (every
    blob checked against its sha256). Holds the whole model once: a recovery path, not the merge path."""
    r = Reconstructor(lambda v: json.loads(env.blobs.get(keys.manifest(v))), env.blobs.get, env.layout.numel)
    return r.get(spec["version_from"])[spec["lo"]:spec["hi"]].contiguous()


def _dense_merge(spec: dict[str, Any], env: ShardEnv, opened: dict[int, OpenUpdate], bases: _Bases,
                 plan: dict[str, Any]) -> torch.Tensor:
    """A rule that needs the whole vector (cclip, geomed, Krum family): all n updates of the range in memory."""
    lo, hi = spec["lo"], spec["hi"]
    valid = plan["valid"]
    rows = torch.empty(len(valid), hi - lo)
    for a, b in chunks(lo, hi, spec["block"]):
        bases.load(a, b, {spec["updates"][i]["base_version"] for i in valid})
        for j, i in enumerate(valid):
            rows[j, a - lo:b - lo] = bases.rebase(opened[i].flat(a, b), spec["updates"][i]["base_version"])
    rule = parse_rule(plan["rule"])
    center = None
    key = keys.agg(spec["shard"], spec["version_from"], "center")
    if env.blobs.size(key) == 4 * (hi - lo):
        center = read_f32(env.blobs, key, 0, hi - lo)
    merged = rule(rows, torch.tensor(plan["weights"], dtype=torch.float32), center=center, seed=spec["seed"])
    env.blobs.put(keys.agg(spec["shard"], spec["version_to"], "center"), f32_bytes(merged * float(spec["damping"])))
    return merged


# ------------------------------------------------------------------ init
def _init(spec: dict[str, Any], env: ShardEnv) -> dict[str, Any]:
    """Version 0: this shard's range of the model's initial weights, published exactly (fp32)."""
    if env.init_params is None:
        raise MergeError("this aggregator cannot build the initial model (no init_params)")
    lo, hi, shard = spec["lo"], spec["hi"], spec["shard"]
    flat = env.layout.flatten(env.init_params())[lo:hi].contiguous()
    theta_out = F32Sink(env.blobs, keys.agg(shard, 0, "theta"))
    mom_out = F32Sink(env.blobs, keys.agg(shard, 0, "mom"))
    pub = _Publisher(spec | {"version_to": 0}, env)
    for a, b in chunks(lo, hi, spec["block"]):
        x = flat[a - lo:b - lo]
        theta_out.write_tensor(x)
        mom_out.write_tensor(torch.zeros_like(x))
        pub.add(x, None)
    out = {"shard": shard, "lo": lo, "hi": hi, "theta": theta_out.close(), "mom": mom_out.close()} | pub.close()
    write_sums(env.blobs, shard, 0, {w: out[w] for w in ("theta", "mom", "pub")})
    return out
