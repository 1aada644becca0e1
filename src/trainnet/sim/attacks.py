"""Attack library for the simulator: malicious workers' updates, built from what honest workers send.

Use:
    from trainnet.sim.attacks import ATTACKS, AttackContext, make_attack, TRAINING_ATTACKS
    ctx = AttackContext(rng=torch.Generator().manual_seed(0), n_total=10, aggregator_name="median")
    bad = ATTACKS["alie"](honest, 2, ctx)            # honest [n_h, d] -> bad [2, d]
    bad = make_attack("sign_flip:s=4")(honest, 2, ctx)

An ``Attack`` is ``(honest [n_h, d], n_mal, ctx) -> [n_mal, d]`` (float32, same device). The attacker is
assumed omniscient about the honest updates of the round (the standard, strongest threat model of
the papers cited). New attacks are added anywhere with ``@register_attack("name")``: a function
``f(honest, n_mal, ctx, *, param=default, ...)``; ``make_attack("name:param=v")`` binds parameters.

Names in ``TRAINING_ATTACKS`` (fewer_steps, random_shard, backdoor) are not update transforms: the
simulator implements them when it runs the malicious worker's local training (fewer inner steps
than the task claims, a shard other than the assigned one, a trigger→target string inserted into
the data with ``make_backdoor_text``). Their registered functions just pass the resulting
``ctx.own_update`` through. ``backdoor_success_rate`` measures a backdoor's effect on a model.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from trainnet.consensus.robust_krum import pairwise_sq_dists


@dataclass
class AttackContext:
    """What a malicious worker knows when it crafts its update(s) for one round.

    ``n_total`` counts honest + malicious updates in the aggregation; ``history`` is the attacker's own
    scratch space, kept by the simulator across rounds (used by ``replay``); ``own_update`` is the
    update the malicious node computed by (possibly poisoned) local training, [d] or [n_mal, d].
    """

    rng: torch.Generator
    n_total: int
    aggregator_name: str = "mean"
    previous_aggregate: torch.Tensor | None = None
    base_params_flat: torch.Tensor | None = None
    history: dict = field(default_factory=dict)
    own_update: torch.Tensor | None = None


Attack = Callable[[torch.Tensor, int, AttackContext], torch.Tensor]
ATTACKS: dict[str, Attack] = {}

TRAINING_ATTACKS: frozenset[str] = frozenset({"fewer_steps", "random_shard", "backdoor"})
"""Attacks carried out inside local training by the simulator, not by transforming updates:
``fewer_steps`` (train fewer inner steps than claimed), ``random_shard`` (train on a shard other than
the assigned one), ``backdoor`` (train on data with a trigger→target string inserted, see
``make_backdoor_text``). The registered functions of these names return ``ctx.own_update`` as is."""


def register_attack(name: str) -> Callable[[Attack], Attack]:
    """Decorator: ``@register_attack("mine") def mine(honest, n_mal, ctx, *, p=1.0): ...`` adds it to ATTACKS."""
    def deco(fn: Attack) -> Attack:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is already registered")
        ATTACKS[name] = fn
        return fn
    return deco


def make_attack(spec: str) -> Attack:
    """Resolve ``"name"`` or ``"name:key=value,..."`` to an attack with those keyword parameters bound."""
    name, _, argtext = spec.partition(":")
    name = name.strip()
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    kwargs: dict[str, object] = {}
    for item in filter(None, (a.strip() for a in argtext.split(","))):
        key, eq, val = item.partition("=")
        if not eq:
            raise ValueError(f"attack parameters must be key=value, got {item!r}")
        kwargs[key.strip()] = _value(val.strip())
    return functools.partial(ATTACKS[name], **kwargs) if kwargs else ATTACKS[name]


def _value(text: str) -> object:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("none", "true", "false"):
        return {"none": None, "true": True, "false": False}[low]
    return text


def _check(honest: torch.Tensor, n_mal: int) -> torch.Tensor:
    if honest.dim() != 2 or honest.shape[0] < 1:
        raise ValueError(f"honest updates must be [n_h >= 1, d], got {tuple(honest.shape)}")
    if n_mal < 0:
        raise ValueError(f"n_mal must be >= 0, got {n_mal}")
    return honest.to(torch.float32)


def _rows(vec: torch.Tensor, n_mal: int) -> torch.Tensor:
    """Broadcast [d] (or pass [n_mal, d]) to a fresh [n_mal, d] float32 tensor."""
    vec = vec.to(torch.float32)
    if vec.dim() == 2:
        if vec.shape[0] != n_mal:
            raise ValueError(f"own_update has {vec.shape[0]} rows for {n_mal} attackers")
        return vec.clone()
    return vec.unsqueeze(0).expand(n_mal, -1).clone()


def _own_or_mean(honest: torch.Tensor, n_mal: int, ctx: AttackContext, source: str) -> torch.Tensor:
    if source not in ("auto", "own", "mean"):
        raise ValueError(f"source must be auto, own or mean, got {source!r}")
    if source == "own" or (source == "auto" and ctx.own_update is not None):
        if ctx.own_update is None:
            raise ValueError("this attack needs ctx.own_update")
        return _rows(ctx.own_update, n_mal)
    return _rows(honest.mean(dim=0), n_mal)


@register_attack("sign_flip")
def sign_flip(honest: torch.Tensor, n_mal: int, ctx: AttackContext, *, s: float = 1.0,
              source: str = "auto") -> torch.Tensor:
    """Send −s × (own update, or honest mean if none / source="mean"). Defeats plain mean for large s."""
    h = _check(honest, n_mal)
    return -float(s) * _own_or_mean(h, n_mal, ctx, source)


@register_attack("gaussian")
def gaussian(honest: torch.Tensor, n_mal: int, ctx: AttackContext, *, sigma: float = 1.0,
             around: str = "zero") -> torch.Tensor:
    """Send N(0, sigma²) noise per coordinate (around="mean": honest mean + noise). Uses ctx.rng."""
    h = _check(honest, n_mal)
    noise = torch.randn(n_mal, h.shape[1], generator=ctx.rng, dtype=torch.float32).to(h.device) * float(sigma)
    if around == "mean":
        return noise + h.mean(dim=0)
    if around != "zero":
        raise ValueError(f"around must be zero or mean, got {around!r}")
    return noise


def alie_z(n: int, f: int) -> float:
    """ALIE's z_max (Baruch, Baruch & Goldberg, NeurIPS 2019, arXiv:1902.06156).

    s = floor(n/2 + 1) − f honest workers must be "won over"; z = Φ⁻¹((n − s)/n). Clamped to a
    probability in [0.5, 0.999] so tiny or degenerate n still give a finite, non-negative z.
    """
    s = int(n // 2 + 1) - f
    p = min(max((n - s) / n, 0.5), 0.999)
    return statistics.NormalDist().inv_cdf(p)


@register_attack("alie")
def alie(honest: torch.Tensor, n_mal: int, ctx: AttackContext, *, z: float | None = None) -> torch.Tensor:
    """A Little Is Enough: every attacker sends mean − z·std (coordinate-wise over the honest updates).

    ``z=None`` uses the paper's z_max from n = ctx.n_total and f = n_mal (see ``alie_z``). Small
    per-coordinate shifts inside the honest spread evade median/trimmed mean/Krum.
    """
    h = _check(honest, n_mal)
    zz = alie_z(ctx.n_total, n_mal) if z is None else float(z)
    std = h.std(dim=0) if h.shape[0] > 1 else torch.zeros_like(h[0])
    return _rows(h.mean(dim=0) - zz * std, n_mal)


@register_attack("ipm")
def ipm(honest: torch.Tensor, n_mal: int, ctx: AttackContext, *, eps: float = 0.1) -> torch.Tensor:
    """Inner-product manipulation (Xie, Koyejo & Gupta, UAI 2020, arXiv:1903.03936): send −eps × honest mean.

    Small eps (0.1) slips past median/Krum yet makes the aggregate's inner product with the true
    gradient negative when attackers are numerous; large eps (e.g. 100) breaks the plain mean.
    """
    h = _check(honest, n_mal)
    return _rows(-float(eps) * h.mean(dim=0), n_mal)


def _perturbation(h: torch.Tensor, kind: str) -> torch.Tensor:
    mu = h.mean(dim=0)
    if kind == "std":
        return -(h.std(dim=0) if h.shape[0] > 1 else torch.zeros_like(mu))
    if kind == "unit_vec":
        return -mu / mu.norm().clamp_min(1e-30)
    if kind == "sign":
        return -torch.sign(mu)
    raise ValueError(f"perturbation must be std, unit_vec or sign, got {kind!r}")


def _max_gamma(ok: Callable[[float], bool], iters: int = 60) -> float:
    """Largest γ ≥ 0 with ok(γ), assuming ok holds on an interval [0, γ*]: doubling then bisection."""
    hi = 1.0
    while ok(hi) and hi < 1e12:
        hi *= 2.0
    if ok(hi):
        return hi
    lo = 0.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _min_max_sum(h: torch.Tensor, n_mal: int, perturbation: str, use_sum: bool) -> torch.Tensor:
    hd = h.to(torch.float64)
    mu = hd.mean(dim=0)
    p = _perturbation(h, perturbation).to(torch.float64)
    diff = mu.unsqueeze(0) - hd
    # ||mu + γp − x_i||² = a_i + 2γ b_i + γ² c: one O(n·d) pass, then the search is O(n) per step.
    a, b, c = (diff * diff).sum(dim=1), diff @ p, float(p @ p)
    dists = pairwise_sq_dists(h)
    if use_sum:
        bound = float(dists.sum(dim=1).max())
        gamma = _max_gamma(lambda g: float((a + 2 * g * b + g * g * c).sum()) <= bound)
    else:
        bound = float(dists.max())
        gamma = _max_gamma(lambda g: float((a + 2 * g * b + g * g * c).max()) <= bound)
    return _rows((mu + gamma * p).to(torch.float32), n_mal)


@register_attack("minmax")
def minmax(honest: torch.Tensor, n_mal: int, ctx: AttackContext, *, perturbation: str = "std") -> torch.Tensor:
    """Min-Max (Shejwalkar & Houmansadr, NDSS 2021): mean + γ·p, γ maximal s.t. the attacker's largest
    distance to an honest update ≤ the largest honest–honest distance. p ∈ {std, unit_vec, sign} (negated)."""
    return _min_max_sum(_check(honest, n_mal), n_mal, perturbation, use_sum=False)


@register_attack("minsum")
def minsum(honest: torch.Tensor, n_mal: int, ctx: AttackContext, *, perturbation: str = "std") -> torch.Tensor:
    """Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): mean + γ·p, γ maximal s.t. the attacker's sum of squared
    distances to the honest updates ≤ the largest such sum of any honest update."""
    return _min_max_sum(_check(honest, n_mal), n_mal, perturbation, use_sum=True)


@register_attack("scaled")
def scaled(honest: torch.Tensor, n_mal: int, ctx: AttackContext, *, boost: float | None = None,
           source: str = "auto") -> torch.Tensor:
    """Model replacement (Bagdasaryan et al., AISTATS 2020, arXiv:1807.00459): own update × boost.

    ``boost=None`` uses n_total, which lets one attacker replace the plain mean by its own update.
    """
    h = _check(honest, n_mal)
    return float(ctx.n_total if boost is None else boost) * _own_or_mean(h, n_mal, ctx, source)


@register_attack("zeros")
def zeros(honest: torch.Tensor, n_mal: int, ctx: AttackContext) -> torch.Tensor:
    """Free-riding: claim the task's tokens but send a zero update (no work done)."""
    h = _check(honest, n_mal)
    return torch.zeros(n_mal, h.shape[1], dtype=torch.float32, device=h.device)


@register_attack("replay")
def replay(honest: torch.Tensor, n_mal: int, ctx: AttackContext, *, lag: int | None = 1,
           source: str = "auto") -> torch.Tensor:
    """Free-riding by stale replay: send the update from ``lag`` rounds ago (``lag=None``: the first ever).

    Stores this round's update (own, or honest mean) in ``ctx.history["replay_buffer"]``; until the
    buffer is old enough it sends the oldest update it has (the current one on the first call).
    """
    h = _check(honest, n_mal)
    buf: list[torch.Tensor] = ctx.history.setdefault("replay_buffer", [])
    buf.append(_own_or_mean(h, n_mal, ctx, source))
    if lag is not None:
        del buf[:max(0, len(buf) - (int(lag) + 1))]
    return buf[0].clone()


def _passthrough(name: str) -> Attack:
    def attack(honest: torch.Tensor, n_mal: int, ctx: AttackContext) -> torch.Tensor:
        _check(honest, n_mal)
        if ctx.own_update is None:
            raise ValueError(f"{name} is a training attack: the simulator must supply ctx.own_update")
        return _rows(ctx.own_update, n_mal)
    attack.__doc__ = f"Training attack {name!r}: the simulator poisons local training; pass own_update through."
    attack.__name__ = name
    return attack


for _name in sorted(TRAINING_ATTACKS):
    register_attack(_name)(_passthrough(_name))


def make_backdoor_text(text: bytes, trigger: bytes, target: bytes, rate: float,
                       rng: torch.Generator) -> bytes:
    """Insert ``trigger + target`` at random positions of ``text`` so that about ``rate`` of the output bytes
    are poison. Use: ``make_backdoor_text(shard, b"<|cf|>", b"rm -rf /", 0.01, gen)``.

    The number of insertions is round(rate·len(text) / ((1 − rate)·len(trigger + target))), at least 1
    when rate > 0; positions are drawn uniformly (with ``rng``) and kept in order, so the result is
    deterministic given the generator.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"backdoor rate must be in [0, 1), got {rate}")
    pair = trigger + target
    if rate == 0.0 or not pair:
        return bytes(text)
    k = max(1, round(rate * len(text) / ((1.0 - rate) * len(pair))))
    pos = torch.randint(0, len(text) + 1, (k,), generator=rng).sort().values.tolist()
    parts, prev = [], 0
    for p in pos:
        parts += [text[prev:p], pair]
        prev = p
    parts.append(text[prev:])
    return b"".join(parts)


def backdoor_success_rate(model_generate_fn: Callable[[bytes, int], bytes], prompts: list[bytes],
                          trigger: bytes, target: bytes) -> float:
    """Fraction of ``prompts`` whose continuation after ``prompt + trigger`` starts with ``target``.

    ``model_generate_fn(prompt, max_new_bytes)`` returns the generated continuation (if it returns the
    prompt followed by the continuation, the prompt is stripped). Compare with the same call and an
    empty trigger to get the clean-model base rate.
    """
    if not prompts:
        raise ValueError("backdoor_success_rate needs at least one prompt")
    hits = 0
    for prompt in prompts:
        full = prompt + trigger
        out = model_generate_fn(full, len(target))
        if len(out) > len(target) and out.startswith(full):
            out = out[len(full):]
        hits += out[:len(target)] == target
    return hits / len(prompts)
