"""Typed run configuration: one small dataclass per component, loaded from TOML.

    cfg = load_config("bench/standard.toml", overrides=["consensus.outer_lr=0.5", "sim.workers=4"])

Every field can be overridden from the command line with `--set section.field=value`, where the
value is parsed as a TOML literal (`0.5`, `true`, `"text"`, `[1, 2]`) and falls back to a bare string.
After the file and the overrides, every field is range-checked (`check`; the table of ranges is
`trainnet.config_rules.RULES`): a value out of range is a ConfigError that names the field and the range.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainnet.config_rules import check_config
from trainnet.models.config import ModelConfig


@dataclass
class DataConfig:
    path: str | None = None  # None: the running Python's standard library sources
    shard_bytes: int = 262_144
    val_every: int = 50  # every val_every-th shard is held out for validation
    max_bytes: int | None = None  # cap on corpus bytes read (None: all)


@dataclass
class InnerConfig:
    """The local (inner) optimizer every worker runs for one task."""

    batch_size: int = 8
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay over the run's token budget down to lr * ratio
    warmup_tokens: float = 0.02  # linear lr warm-up over this fraction of the budget
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # "auto" (bf16 autocast on CUDA, else fp32), "fp32" or "bf16". A run that verifies tasks pins "auto" to
    # fp32: a CPU verifier replays fp32, and bf16 GPU work differs from it by more than the tolerance
    # (bench/results/verify_gpu.md); "bf16" with verification needs a GPU verifier.
    precision: str = "auto"


@dataclass
class ConsensusConfig:
    """How the coordinator turns buffered pseudo-gradients into new model versions."""

    h: int = 100  # inner steps per task
    h_start: int | None = None  # H schedule: ramp from h_start to h over the first h_ramp of tokens
    h_ramp: float = 0.0
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    quorum: int = 4  # aggregate as soon as this many updates are buffered
    grace_s: float = 30.0  # ...or when the oldest buffered update has waited this long
    min_updates: int = 1  # a grace-window aggregation needs at least this many
    max_staleness: int = 8  # versions; staler updates are rejected and their shard requeued
    staleness_power: float = 0.5  # weight (1 + tau) ** -power
    partial_scaling: bool = True  # a partial (grace-window) merge moves the model by len/quorum of a step
    stale_mode: str = "endpoint"  # damp | endpoint (re-base stale updates on the current model)
    token_weighting: bool = True
    # Secure by default (docs/SECURITY.md): "robust" is norm_clip:2+trimmed_mean:0.2, a norm bound (every
    # update clipped to 2x the median norm of its merge) in front of a 20% coordinate-wise trimmed mean.
    # "mean" turns robust aggregation off; every entry point then warns (defence_report).
    aggregator: str = "robust"
    lease_s: float = 600.0  # a lease not answered in this long expires and its shard is requeued
    max_leases_per_node: int = 1
    warm_start: float = 0.0  # share of the token budget trained first by one node in one task
    # Verification by recomputation (docs/SECURITY.md): share of accepted tasks re-executed by a verifier,
    # failed audits that ban a node, and the comparison tolerance (relative L2 error, cosine).
    verify_rate: float = 0.12  # the measured default (bench/results/security.md); 0 turns verification off
    # Probation: a node's first verify_probation accepted updates are always audited (when verify_rate > 0),
    # so a node that cheats from its first task is banned at once, and so is every fresh Sybil identity.
    verify_probation: int = 1
    ban_after_failures: int = 1
    # The simulator's audit secret ("": a fixed default); the server makes a random one per run.
    audit_key: str = ""
    verify_rel_error: float = 0.05
    verify_min_cosine: float = 0.99
    reveal_s: float = 0.0  # an audited task's residuals are due this long after acceptance (0: 10 x lease_s)
    # Swarm scaling: the quorum grows to ceil(active nodes / target_staleness) so that staleness stays near
    # this many versions whatever the swarm size (core/scaling.py); 0 keeps the quorum fixed.
    target_staleness: float = 2.0


@dataclass
class AggregateConfig:
    """The data plane: how many aggregator shards split the parameters, and what each version publishes."""

    shards: int = 1  # parameter ranges, each merged by whichever aggregator process claims it
    publish_codec: str = "q4"  # the per-version model delta workers download (coordinator-side error feedback)
    full_every: int = 16  # a full bf16 checkpoint every this many versions (version 0 and the final: exact fp32)
    block: int = 1 << 20  # parameters per statistics block and published chunk; shards own whole blocks
    merge_lease_s: float = 300.0  # an aggregator's claim on a merge task lapses after this long


@dataclass
class SimConfig:
    algo: str = "async"  # async | sync
    workers: int = 8
    tokens: int = 2_000_000  # accepted-token budget
    seed: int = 0
    dropout: float = 0.0  # probability that a task is lost (worker vanishes mid-task)
    downtime_s: float = 60.0  # how long a dropped worker stays away
    speed_sigma: float = 0.0  # log-normal spread of worker speeds
    slow_fraction: float = 0.0  # share of workers in the slow tail
    slow_factor: float = 0.25  # their speed multiplier
    lag_s: float = 0.0  # mean extra upload delay (exponential)
    depart_fraction: float = 0.0  # share of workers that leave for good at a random time
    late_fraction: float = 0.0  # share of workers that join late
    step_s: float = 0.1  # virtual seconds per inner step for a speed-1 worker
    eval_every: int = 10  # outer steps between validation evaluations
    eval_batches: int = 8
    eval_batch_size: int = 32
    codec: str = "q2"  # update codec (the default: 2-bit blockwise, see bench/results/codecs.md)
    threads: int = 0  # torch threads (0: torch default)
    # Attacks (sim/adversary.py): an attack spec from trainnet.sim.attacks ("" = none), the share of
    # workers that run it, and the data layout: iid = false gives every node its own contiguous block
    # of shards (non-IID; coordinator shard_groups = workers).
    attack: str = ""
    malicious: float = 0.0
    iid: bool = True
    attack_window: int = 0  # honest updates the omniscient attacker sees (0: the quorum)
    verifier_speed: float = 1.0  # the verifier's speed (a speed-1 worker takes steps * step_s)
    asr_prompts: int = 64  # held-out prompts for the backdoor attack success rate
    init: str = ""  # optional safetensors file of initial parameters (a pre-trained model to fine-tune)


@dataclass
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def defence_report(cfg: RunConfig) -> dict[str, Any]:
    """The run's defences and, in `off`, one warning per part the operator turned off (printed by every
    entry point at start and shown in /v1/status): robust aggregation, the norm bound, verification,
    probation."""
    c = cfg.consensus
    spec = c.aggregator
    resolved = "norm_clip:2+trimmed_mean:0.2" if spec == "robust" else spec
    off = []
    if resolved.split(":")[0].split("+")[-1] == "mean" and "+" not in resolved:
        off.append("robust aggregation is OFF (consensus.aggregator = 'mean'): one update can move the model "
                   "arbitrarily far")
    elif not resolved.startswith("norm_clip"):
        off.append(f"no norm bound in front of the rule (consensus.aggregator = {spec!r}): add 'norm_clip:2+'")
    if c.verify_rate <= 0:
        off.append("verification is OFF (consensus.verify_rate = 0): cheaters are never caught or banned")
    elif c.verify_probation <= 0:
        off.append("audit probation is OFF (consensus.verify_probation = 0): a fresh identity's first updates "
                   "are audited only at the base rate")
    return {"aggregator": resolved, "verify_rate": c.verify_rate, "verify_probation": c.verify_probation,
            "off": off}


class ConfigError(ValueError):
    """A configuration file or override names an unknown field, or a value of the wrong type or out of range."""


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(value: Any, current: Any, where: str) -> Any:
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(current, str) and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _apply(obj: Any, data: dict[str, Any], prefix: str) -> None:
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config field {where!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a table, got {value!r}")
            _apply(current, value, where + ".")
        else:
            setattr(obj, key, _coerce(value, current, where))


def set_field(cfg: RunConfig, dotted: str, value: Any) -> None:
    """Set `section.field` (any depth) on cfg, with type checks."""
    parts = dotted.split(".")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    _apply(cfg, nested, "")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a RunConfig from defaults, then a TOML file, then `key=value` overrides."""
    cfg = RunConfig()
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        _apply(cfg, data, "")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        set_field(cfg, key.strip(), _parse_value(raw.strip()))
    check(cfg)
    return cfg


def check(cfg: RunConfig) -> None:
    """Raise ConfigError listing every field of cfg outside its range, e.g.
    `sim.workers must be an integer >= 1 (got -1)` (ranges: trainnet.config_rules.RULES)."""
    problems = check_config(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
