"""The allowed values of every run-config field, in one table, checked by `trainnet.config.load_config`.

    problems = check_config(cfg)        # [] or ["sim.workers must be an integer >= 1 (got -1)", ...]
    RULES["sim.workers"].describe()     # "an integer >= 1"

`RULES` maps `section.field` (or a top-level `field`) to a rule; `CROSS_CHECKS` holds the few rules that
relate two fields. Every dataclass field of `RunConfig` must have a rule here: tests/config/test_rules.py
fails for a field without one, so a new field cannot ship without its range. At run time a field with no
rule is skipped rather than refused (a newer model dataclass with extra fields still loads; the test is
where the missing rule is caught).

Codec, aggregator and attack specs are checked by their own parsers, whose error is wrapped to name the
field. Checks that need the data (e.g. `data.max_bytes` large enough for one shard) stay with the corpus.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from trainnet.protocol.ids import ID_RE


class Rule(Protocol):
    def describe(self) -> str: ...

    def problem(self, value: Any) -> str | None:
        """None when the value is allowed, else why not (the message adds the field and the value)."""


@dataclass(frozen=True)
class Int:
    """An integer (not a bool) in [lo, hi]; hi None: no upper bound."""

    lo: int
    hi: int | None = None

    def describe(self) -> str:
        return f"an integer >= {self.lo}" if self.hi is None else f"an integer in [{self.lo}, {self.hi}]"

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= self.lo \
            and (self.hi is None or value <= self.hi)
        return None if ok else ""


@dataclass(frozen=True)
class Num:
    """A finite number in a range; `open_lo` / `open_hi` exclude the bound. hi None: no upper bound."""

    lo: float
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False

    def describe(self) -> str:
        if self.hi is None:
            return f"a number {'>' if self.open_lo else '>='} {self.lo:g}"
        return f"a number in {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}{')' if self.open_hi else ']'}"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return ""
        above = value > self.lo if self.open_lo else value >= self.lo
        below = self.hi is None or (value < self.hi if self.open_hi else value <= self.hi)
        return None if above and below else ""


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)

    def problem(self, value: Any) -> str | None:
        return None if value in self.choices else ""


@dataclass(frozen=True)
class Flag:
    def describe(self) -> str:
        return "true or false"

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else ""


@dataclass(frozen=True)
class Text:
    """Any string (free text or a local path read later), or with `pattern` one matching it."""

    what: str = "a string"
    pattern: Any = None  # a compiled regex
    nonempty: bool = False

    def describe(self) -> str:
        return self.what

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, str) and (self.pattern is None or self.pattern.match(value) is not None) \
            and not (self.nonempty and value == "")
        return None if ok else ""


@dataclass(frozen=True)
class Spec:
    """A spec string checked by its own parser (a ValueError from it says what is wrong)."""

    what: str
    parse: Callable[[str], Any]
    empty_ok: bool = False  # "" means "none" (e.g. no attack)

    def describe(self) -> str:
        return self.what

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return ""
        if value == "" and self.empty_ok:
            return None
        try:
            self.parse(value)
        except ValueError as exc:
            return str(exc)
        return None


@dataclass(frozen=True)
class Table:
    """A TOML table (a dict with string keys); what it holds is checked where it is used."""

    what: str = "a table"

    def describe(self) -> str:
        return self.what

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, dict) and all(isinstance(k, str) for k in value) else ""


def _model_spec(text: str) -> None:
    from trainnet.models import get_spec

    try:
        get_spec(text)
    except KeyError as exc:  # the spec parsers' contract here is ValueError
        raise ValueError(str(exc).strip('"')) from None


@dataclass(frozen=True)
class Unset:
    """None (the field left out: `meaning`) or a value the inner rule allows."""

    rule: Any
    meaning: str

    def describe(self) -> str:
        return f"{self.rule.describe()}, or left out ({self.meaning})"

    def problem(self, value: Any) -> str | None:
        return None if value is None else self.rule.problem(value)


def _codec(spec: str) -> Any:
    from trainnet.codec import parse_codec

    return parse_codec(spec)


def _aggregator(spec: str) -> Any:
    from trainnet.consensus import get_aggregator

    return get_aggregator(spec)


def _attack(spec: str) -> Any:
    from trainnet.sim.attacks import make_attack  # lazily: the simulator package imports this module's users

    return make_attack(spec)


SHARE = Num(0.0, 1.0)  # a fraction of workers / tokens / tasks
BELOW_ONE = Num(0.0, 1.0, open_hi=True)
POSITIVE = Num(0.0, open_lo=True)
NONNEG = Num(0.0)

RULES: dict[str, Rule] = {
    "name": Text("1-64 characters of A-Z a-z 0-9 _ - (it is the run id on the wire)", ID_RE),
    # model (GPT fields; a model dataclass with more fields adds rules for them here)
    "model.n_layer": Int(1),
    "model.n_head": Int(1),
    "model.n_embd": Int(1),  # and a multiple of n_head (CROSS_CHECKS)
    "model.block_size": Int(1),
    "model.spec": Spec("a model spec name (gpt-bytes, hf)", _model_spec),
    "model.vocab_size": Int(2),  # gpt-bytes: 256 for the byte tokenizer (models/ checks it against the data)
    "model.config": Unset(Text("a Hugging Face config.json path", nonempty=True), "inline [model.hf] fields"),
    "model.hf": Table("a table of Hugging Face config fields (model_type, hidden_size, ...)"),
    "model.init": Unset(Text("a local checkpoint folder or .safetensors file", nonempty=True), "random init"),
    "model.tokenizer": Unset(Text("a tokenizer.json or a folder holding one", nonempty=True),
                             "the spec's default"),
    "model.dropout": BELOW_ONE,
    "model.bias": Flag(),
    # data
    "data.path": Unset(Text("a file or folder path", nonempty=True), "the running Python's standard library"),
    "data.shard_bytes": Int(1),
    "data.val_every": Int(2),  # every val_every-th shard is held out: 1 would hold out everything
    "data.max_bytes": Unset(Int(1), "the whole corpus"),
    # inner optimizer
    "inner.batch_size": Int(1),
    "inner.lr": POSITIVE,
    "inner.min_lr_ratio": SHARE,
    "inner.warmup_tokens": BELOW_ONE,
    "inner.weight_decay": NONNEG,
    "inner.beta1": BELOW_ONE,
    "inner.beta2": BELOW_ONE,
    "inner.grad_clip": NONNEG,  # 0: no clipping
    "inner.precision": OneOf(("auto", "fp32", "bf16")),
    # consensus
    "consensus.h": Int(1),
    "consensus.h_start": Unset(Int(1), "no H schedule"),
    "consensus.h_ramp": SHARE,
    "consensus.outer_lr": POSITIVE,
    "consensus.outer_momentum": BELOW_ONE,
    "consensus.nesterov": Flag(),
    "consensus.quorum": Int(1),
    "consensus.grace_s": NONNEG,  # 0: merge whatever is buffered at once
    "consensus.min_updates": Int(1),
    "consensus.max_staleness": Int(0),
    "consensus.staleness_power": NONNEG,
    "consensus.partial_scaling": Flag(),
    "consensus.stale_mode": OneOf(("damp", "endpoint")),
    "consensus.token_weighting": Flag(),
    "consensus.aggregator": Spec("an aggregation rule spec (mean, robust, median, trimmed_mean:0.2, "
                                 "norm_clip:2+trimmed_mean:0.2, ...)", _aggregator),
    "consensus.lease_s": POSITIVE,
    "consensus.max_leases_per_node": Int(1),
    "consensus.warm_start": BELOW_ONE,
    "consensus.verify_rate": SHARE,
    "consensus.verify_probation": Int(0),
    "consensus.ban_after_failures": Int(1),
    "consensus.audit_key": Text(),
    "consensus.verify_rel_error": POSITIVE,
    "consensus.verify_min_cosine": Num(-1.0, 1.0),
    "consensus.reveal_s": NONNEG,  # 0: 10 x lease_s
    "consensus.target_staleness": NONNEG,  # 0: the quorum stays fixed whatever the swarm size
    # simulator
    "sim.algo": OneOf(("async", "sync")),
    "sim.workers": Int(1),
    "sim.tokens": Int(1),
    "sim.seed": Int(0, 2**63 - 1),
    "sim.dropout": Num(0.0, 0.95),  # as `--dropout`: at 1 no task would ever finish
    "sim.downtime_s": NONNEG,
    "sim.speed_sigma": NONNEG,
    "sim.slow_fraction": SHARE,
    "sim.slow_factor": Num(0.0, 1.0, open_lo=True),  # a speed multiplier of the slow tail
    "sim.lag_s": NONNEG,
    "sim.depart_fraction": SHARE,
    "sim.late_fraction": SHARE,
    "sim.step_s": POSITIVE,
    "sim.eval_every": Int(1),
    "sim.eval_batches": Int(1),
    "sim.eval_batch_size": Int(1),
    "sim.codec": Spec("a codec spec (fp32, fp16, q2, topk:0.015+q4, dct64:top4, ...)", _codec),
    "sim.threads": Int(0),  # 0: torch's default
    "sim.attack": Spec("an attack spec NAME[:key=value,...] from trainnet.sim.attacks, or \"\" (none)",
                       _attack, empty_ok=True),
    "sim.malicious": SHARE,
    "sim.iid": Flag(),
    "sim.attack_window": Int(0),  # 0: the quorum
    "sim.verifier_speed": POSITIVE,
    "sim.asr_prompts": Int(1),
    "sim.init": Text("a safetensors file path, or \"\" (random init)"),
    "aggregate.shards": Int(1, 4096),
    "aggregate.publish_codec": Spec("a dense codec spec for the published deltas (int8, q4, ...)", _codec),
    "aggregate.full_every": Int(1),
    "aggregate.block": Int(64, 1 << 26),
    "aggregate.merge_lease_s": POSITIVE,
}


@dataclass(frozen=True)
class Cross:
    """A rule over several fields: `ok(cfg)` is checked only when each field passed its own rule."""

    fields: tuple[str, ...]
    ok: Callable[[Any], bool]
    message: Callable[[Any], str]


def _one_place_rule(c: Any) -> bool:
    """A dense rule (cclip, geomed, Krum family, bucketing) on more than one aggregator shard (the engine refuses
    it too: core/engine.py)."""
    from trainnet.consensus.plan import decomposable

    return c.aggregate.shards > 1 and not decomposable(c.consensus.aggregator)


CROSS_CHECKS: tuple[Cross, ...] = (
    Cross(("aggregate.shards", "consensus.aggregator"), lambda c: not _one_place_rule(c),
          lambda c: f"consensus.aggregator {c.consensus.aggregator!r} needs the whole parameter vector in one place: "
                    f"it runs on 1 aggregator shard only (got aggregate.shards {c.aggregate.shards}); use mean, "
                    "median or trimmed_mean (with norm_clip) on more shards"),
    Cross(("aggregate.block",), lambda c: c.aggregate.block & (c.aggregate.block - 1) == 0,
          lambda c: f"aggregate.block must be a power of two (got {c.aggregate.block})"),
    Cross(("model.n_embd", "model.n_head"), lambda c: c.model.n_embd % c.model.n_head == 0,
          lambda c: f"model.n_embd must be a multiple of model.n_head (got n_embd {c.model.n_embd}, "
                    f"n_head {c.model.n_head})"),
    Cross(("consensus.h_start", "consensus.h"), lambda c: c.consensus.h_start is None or c.consensus.h_start <= c.consensus.h,
          lambda c: f"consensus.h_start must be <= consensus.h (got h_start {c.consensus.h_start}, h {c.consensus.h})"),
    Cross(("consensus.h_start", "consensus.h_ramp"),
          lambda c: c.consensus.h_start is None or c.consensus.h_ramp > 0,
          lambda c: "consensus.h_start has no effect unless consensus.h_ramp > 0 (the share of the budget the "
                    f"ramp from h_start to h takes; got h_ramp {c.consensus.h_ramp})"),
    Cross(("consensus.min_updates", "consensus.quorum"), lambda c: c.consensus.min_updates <= c.consensus.quorum,
          lambda c: f"consensus.min_updates must be <= consensus.quorum (got min_updates {c.consensus.min_updates}, "
                    f"quorum {c.consensus.quorum})"),
    Cross(("sim.slow_fraction", "sim.late_fraction"), lambda c: c.sim.slow_fraction + c.sim.late_fraction <= 1,
          lambda c: f"sim.slow_fraction + sim.late_fraction must be <= 1: the slow and the late workers are disjoint "
                    f"(got {c.sim.slow_fraction} + {c.sim.late_fraction})"),
)


def config_fields(cfg: Any) -> list[tuple[str, Any]]:
    """(`section.field` or `field`, value) of every leaf field of a RunConfig-shaped dataclass."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += [(f"{f.name}.{g.name}", getattr(value, g.name)) for g in dataclasses.fields(value)]
        else:
            out.append((f.name, value))
    return out


def unruled_fields(cfg: Any) -> list[str]:
    """Fields of cfg without a rule in RULES (must be empty: tests/config/test_rules.py)."""
    return [name for name, _ in config_fields(cfg) if name not in RULES]


def check_config(cfg: Any) -> list[str]:
    """Every problem of cfg, one message per field (`<field> must be <range> (got <value>)`), then the
    cross-field ones whose fields are each fine; [] when cfg is valid."""
    problems, bad = [], set()
    for name, value in config_fields(cfg):
        rule = RULES.get(name)
        if rule is None:
            continue  # caught by tests/config/test_rules.py, not at a user's run
        why = rule.problem(value)
        if why is not None:
            bad.add(name)
            problems.append(f"{name} must be {rule.describe()} (got {value!r}{': ' + why if why else ''})")
    known = {name for name, _ in config_fields(cfg)}
    for cross in CROSS_CHECKS:
        if set(cross.fields) <= known and not set(cross.fields) & bad and not cross.ok(cfg):
            problems.append(cross.message(cfg))
    return problems
