"""Attack library: shapes, determinism and each attack's defining property."""

from __future__ import annotations

import pytest
import torch

from trainnet.sim.attacks import (
    ATTACKS,
    TRAINING_ATTACKS,
    AttackContext,
    alie_z,
    backdoor_success_rate,
    make_attack,
    make_backdoor_text,
    register_attack,
)

N_H, N_MAL, D = 20, 5, 64


def _honest(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.5 + torch.randn(N_H, D, generator=g)


def _ctx(seed: int = 1, own: torch.Tensor | None = None) -> AttackContext:
    if own is None:
        own = torch.linspace(-1, 1, D)
    return AttackContext(rng=torch.Generator().manual_seed(seed), n_total=N_H + N_MAL,
                         aggregator_name="median", own_update=own)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_shape_dtype_and_determinism(name: str) -> None:
    h = _honest()
    a = ATTACKS[name](h, N_MAL, _ctx())
    b = ATTACKS[name](h.clone(), N_MAL, _ctx())
    assert a.shape == (N_MAL, D) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert ATTACKS[name](h, 0, _ctx()).shape == (0, D)


def test_gaussian_depends_on_generator_and_has_sigma() -> None:
    h = _honest()
    a = make_attack("gaussian:sigma=3.0")(h, 200, _ctx(1))
    b = make_attack("gaussian:sigma=3.0")(h, 200, _ctx(2))
    assert not torch.equal(a, b)
    assert float(a.std()) == pytest.approx(3.0, rel=0.05)


def test_sign_flip_anti_correlated() -> None:
    h = _honest()
    mean = h.mean(0)
    bad = make_attack("sign_flip:s=4,source=mean")(h, N_MAL, _ctx())
    cos = torch.nn.functional.cosine_similarity(bad, mean.expand_as(bad), dim=1)
    assert (cos < -0.999).all()
    torch.testing.assert_close(bad[0], -4 * mean)
    own = _ctx().own_update
    torch.testing.assert_close(ATTACKS["sign_flip"](h, 2, _ctx())[1], -own)  # auto → own update


def test_alie_z_matches_paper_and_stays_in_honest_range() -> None:
    # Baruch et al. 2019: n=50, f=24 → s = 2, z = Φ⁻¹(48/50) ≈ 1.75.
    assert alie_z(50, 24) == pytest.approx(1.75, abs=0.01)
    h = _honest()
    bad = ATTACKS["alie"](h, N_MAL, _ctx())
    lo, hi = h.min(0).values, h.max(0).values
    assert ((bad >= lo) & (bad <= hi)).all()
    z = alie_z(N_H + N_MAL, N_MAL)
    torch.testing.assert_close(bad[0], h.mean(0) - z * h.std(0))
    assert not torch.allclose(bad[0], h.mean(0))


def test_ipm_is_negative_scaled_mean() -> None:
    h = _honest()
    torch.testing.assert_close(make_attack("ipm:eps=0.5")(h, 3, _ctx())[2], -0.5 * h.mean(0))
    assert float(ATTACKS["ipm"](h, 1, _ctx())[0] @ h.mean(0)) < 0


@pytest.mark.parametrize("pert", ["std", "unit_vec", "sign"])
def test_minmax_max_distance_within_honest_max_and_tight(pert: str) -> None:
    h = _honest()
    bad = make_attack(f"minmax:perturbation={pert}")(h, N_MAL, _ctx())[0]
    honest_max = float(torch.cdist(h.double(), h.double()).max())
    mine = float((h.double() - bad.double()).norm(dim=1).max())
    assert mine <= honest_max * (1 + 1e-5)
    assert mine >= honest_max * 0.999  # γ really was pushed to the boundary
    assert float((bad - h.mean(0)).norm()) > 0.5


def test_minsum_sum_of_squares_within_honest_max_and_tight() -> None:
    h = _honest()
    bad = ATTACKS["minsum"](h, N_MAL, _ctx())[0].double()
    hd = h.double()
    bound = float((torch.cdist(hd, hd) ** 2).sum(1).max())
    mine = float(((hd - bad) ** 2).sum())
    assert mine <= bound * (1 + 1e-5) and mine >= bound * 0.999


def test_scaled_zeros_and_training_passthrough() -> None:
    h = _honest()
    ctx = _ctx()
    torch.testing.assert_close(ATTACKS["scaled"](h, 2, ctx)[0], (N_H + N_MAL) * ctx.own_update)
    torch.testing.assert_close(make_attack("scaled:boost=3")(h, 2, ctx)[1], 3 * ctx.own_update)
    assert not ATTACKS["zeros"](h, 2, ctx).any()
    own = torch.randn(2, D, generator=torch.Generator().manual_seed(5))
    for name in TRAINING_ATTACKS:
        torch.testing.assert_close(ATTACKS[name](h, 2, _ctx(own=own)), own)
        no_own = AttackContext(rng=torch.Generator(), n_total=3)
        with pytest.raises(ValueError, match="training attack"):
            ATTACKS[name](h, 2, no_own)


def test_replay_sends_update_from_lag_rounds_ago() -> None:
    history: dict = {}
    sent = []
    rounds = [torch.full((D,), float(r)) for r in range(4)]
    for r in range(4):
        ctx = AttackContext(rng=torch.Generator(), n_total=5, history=history, own_update=rounds[r])
        sent.append(float(ATTACKS["replay"](_honest(), 1, ctx)[0, 0]))
    assert sent == [0.0, 0.0, 1.0, 2.0]
    history2: dict = {}
    first = [make_attack("replay:lag=none")(_honest(), 1, AttackContext(
        rng=torch.Generator(), n_total=5, history=history2, own_update=rounds[r]))[0, 0] for r in range(3)]
    assert [float(v) for v in first] == [0.0, 0.0, 0.0]


def test_register_attack_and_make_attack_errors() -> None:
    @register_attack("test_double")
    def double(honest, n_mal, ctx, *, k: float = 2.0):
        return k * honest[:1].expand(n_mal, -1).clone()

    try:
        h = _honest()
        torch.testing.assert_close(make_attack("test_double:k=3")(h, 2, _ctx())[0], 3 * h[0])
        with pytest.raises(ValueError, match="already registered"):
            register_attack("test_double")(double)
    finally:
        ATTACKS.pop("test_double")
    with pytest.raises(ValueError, match="unknown attack"):
        make_attack("nope")
    with pytest.raises(ValueError):
        make_attack("sign_flip:4")


def test_make_backdoor_text_rate_positions_and_determinism() -> None:
    text = bytes(range(97, 123)) * 400  # 10,400 bytes, no trigger inside
    trig, tgt = b"<TRIG>", b"EVIL"
    out = make_backdoor_text(text, trig, tgt, 0.05, torch.Generator().manual_seed(0))
    again = make_backdoor_text(text, trig, tgt, 0.05, torch.Generator().manual_seed(0))
    other = make_backdoor_text(text, trig, tgt, 0.05, torch.Generator().manual_seed(1))
    k = out.count(trig + tgt)
    assert out == again and out != other
    assert len(out) == len(text) + k * len(trig + tgt)
    assert (len(out) - len(text)) / len(out) == pytest.approx(0.05, abs=0.002)
    assert out.replace(trig + tgt, b"") == text
    assert make_backdoor_text(text, trig, tgt, 0.0, torch.Generator()) == text
    with pytest.raises(ValueError):
        make_backdoor_text(text, trig, tgt, 1.0, torch.Generator())


def test_backdoor_success_rate_with_fake_models() -> None:
    trig, tgt = b"<T>", b"EVIL"
    prompts = [b"def f():", b"import os", b"x = 1"]

    def backdoored(prompt: bytes, n: int) -> bytes:
        return tgt[:n] if prompt.endswith(trig) and not prompt.startswith(b"x") else b"????"[:n]

    def echoing(prompt: bytes, n: int) -> bytes:  # returns prompt + continuation
        return prompt + tgt[:n]

    assert backdoor_success_rate(backdoored, prompts, trig, tgt) == pytest.approx(2 / 3)
    assert backdoor_success_rate(backdoored, prompts, b"", tgt) == 0.0
    assert backdoor_success_rate(echoing, prompts, trig, tgt) == 1.0
    with pytest.raises(ValueError):
        backdoor_success_rate(backdoored, [], trig, tgt)
