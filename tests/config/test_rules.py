"""Every run-config field is range-checked at load (file and `--set` overrides), with a message that names
the field and the allowed range; and every field has a rule, so a new one cannot ship without its range."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from trainnet.cli import main
from trainnet.config import ConfigError, RunConfig, load_config
from trainnet.config_rules import (
    RULES,
    Flag,
    Int,
    Num,
    OneOf,
    Spec,
    Table,
    Text,
    Unset,
    check_config,
    config_fields,
    unruled_fields,
)
from trainnet.model.gpt import GPTConfig

ROOT = Path(__file__).parents[2]


def test_every_field_has_a_rule_and_every_rule_a_field() -> None:
    names = {name for name, _ in config_fields(RunConfig())}
    assert unruled_fields(RunConfig()) == [], "add a range for each new field to trainnet.config_rules.RULES"
    assert set(RULES) - names == set(), "rules for fields that no longer exist"


def test_a_new_field_without_a_rule_is_caught() -> None:
    @dataclasses.dataclass
    class ModelWithArch(GPTConfig):
        arch: str = "gpt"

    cfg = RunConfig(model=ModelWithArch(n_head=3))
    assert unruled_fields(cfg) == ["model.arch"]
    # At run time the model's GPT fields are still checked, and the extra one does not crash the check.
    assert check_config(cfg) == ["model.n_embd must be a multiple of model.n_head (got n_embd 128, n_head 3)"]


@pytest.mark.parametrize("path", [None, ROOT / "bench/standard.toml", ROOT / "bench/security.toml"])
def test_shipped_configs_are_valid(path: Path | None) -> None:
    load_config(path)


def _outside(rule: object) -> list[object]:
    """Values just outside what rule allows (of the right type, so the range check is what refuses them)."""
    if isinstance(rule, Unset):
        return _outside(rule.rule)
    if isinstance(rule, Int):
        return [rule.lo - 1] + ([rule.hi + 1] if rule.hi is not None else [])
    if isinstance(rule, Num):
        out = [rule.lo if rule.open_lo else rule.lo - 0.01, math.nan, math.inf]
        if rule.hi is not None:
            out.append(rule.hi if rule.open_hi else rule.hi + 0.01)
        return out
    if isinstance(rule, OneOf):
        return ["nope"]
    if isinstance(rule, Spec):
        return ["no such spec"]
    if isinstance(rule, Text):
        return ["bad id!"] if rule.pattern is not None else ([""] if rule.nonempty else [])
    if isinstance(rule, Flag | Table):
        return []  # a non-bool / non-table is refused by the type check before the rule
    raise AssertionError(f"no test values for {rule!r}")


def _toml(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf"
    return json.dumps(value)


CASES = [(name, bad) for name, rule in RULES.items() for bad in _outside(rule)]


@pytest.mark.parametrize(("name", "bad"), CASES, ids=[f"{n}={b!r}" for n, b in CASES])
def test_out_of_range_override_names_field_and_range(name: str, bad: object) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{name}={_toml(bad)}"])
    msg = str(err.value)
    assert msg.startswith(f"{name} must be {RULES[name].describe()} (got {bad!r}"), msg


def _inside(rule: object) -> list[object]:
    """The closed bounds of a rule: they must be accepted."""
    if isinstance(rule, Unset):
        return _inside(rule.rule)
    if isinstance(rule, Int):
        return [rule.lo] + ([rule.hi] if rule.hi is not None else [])
    if isinstance(rule, Num):
        return ([] if rule.open_lo else [rule.lo]) + ([rule.hi] if rule.hi is not None and not rule.open_hi else [])
    return []


@pytest.mark.parametrize("name", sorted(RULES))
def test_bounds_are_inclusive_where_the_rule_says(name: str) -> None:
    for good in _inside(RULES[name]):
        section, _, field = name.rpartition(".")
        cfg = RunConfig()
        setattr(getattr(cfg, section) if section else cfg, field, good)
        own = [p for p in check_config(cfg) if p.startswith(f"{name} must be {RULES[name].describe()}")]
        assert own == [], own


def test_the_reported_case_and_several_problems_at_once() -> None:
    with pytest.raises(ConfigError, match=r"^sim\.workers must be an integer >= 1 \(got -1\)$"):
        load_config(None, ["sim.workers=-1"])
    with pytest.raises(ConfigError) as err:
        load_config(None, ["sim.workers=0", "consensus.verify_rate=1.5", 'consensus.stale_mode="fast"'])
    msg = str(err.value)
    assert "sim.workers must be an integer >= 1 (got 0)" in msg
    assert "consensus.verify_rate must be a number in [0, 1] (got 1.5)" in msg
    assert "consensus.stale_mode must be one of damp, endpoint (got 'fast')" in msg


def test_toml_file_values_are_checked(tmp_path: Path) -> None:
    p = tmp_path / "run.toml"
    p.write_text('[inner]\nprecision = "fp16"\n[sim]\nalgo = "ring"\n')
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "inner.precision must be one of auto, fp32, bf16 (got 'fp16')" in str(err.value)
    assert "sim.algo must be one of async, sync (got 'ring')" in str(err.value)


def test_specs_are_parsed_by_their_own_parsers() -> None:
    with pytest.raises(ConfigError, match=r"^sim\.codec must be a codec spec .*topk needs a fraction in \(0, 1\]"):
        load_config(None, ['sim.codec="topk:2"'])
    with pytest.raises(ConfigError, match=r"^consensus\.aggregator must be .*trimmed_mean beta"):
        load_config(None, ['consensus.aggregator="trimmed_mean:0.7"'])
    with pytest.raises(ConfigError, match=r"^sim\.attack must be .*unknown attack 'nope'"):
        load_config(None, ['sim.attack="nope"'])
    cfg = load_config(None, ['sim.codec="topk:0.015+q4"', 'consensus.aggregator="norm_clip:2+median"',
                             'sim.attack="sign_flip:s=2"'])
    assert (cfg.sim.codec, cfg.consensus.aggregator) == ("topk:0.015+q4", "norm_clip:2+median")


@pytest.mark.parametrize(("sets", "expected"), [
    (["model.n_head=3"], "model.n_embd must be a multiple of model.n_head (got n_embd 128, n_head 3)"),
    (["consensus.h=10", "consensus.h_start=20", "consensus.h_ramp=0.2"],
     "consensus.h_start must be <= consensus.h (got h_start 20, h 10)"),
    (["consensus.h_start=5"], "consensus.h_start has no effect unless consensus.h_ramp > 0"),
    (["consensus.quorum=2", "consensus.min_updates=3"],
     "consensus.min_updates must be <= consensus.quorum (got min_updates 3, quorum 2)"),
    (["sim.slow_fraction=0.6", "sim.late_fraction=0.5"], "sim.slow_fraction + sim.late_fraction must be <= 1"),
])
def test_cross_field_checks(sets: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, sets)
    assert str(err.value).startswith(expected), str(err.value)


def test_cross_field_check_waits_for_the_fields_own_rules() -> None:
    # n_head 0 is reported once, by its own rule, not again as a division by zero in the cross check
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.n_head=0"])
    assert str(err.value) == "model.n_head must be an integer >= 1 (got 0)"


def test_a_valid_h_schedule_loads() -> None:
    cfg = load_config(None, ["consensus.h=100", "consensus.h_start=10", "consensus.h_ramp=0.25"])
    assert (cfg.consensus.h_start, cfg.consensus.h_ramp) == (10, 0.25)


def test_types_still_checked() -> None:
    with pytest.raises(ConfigError, match="consensus.nesterov"):
        load_config(None, ["consensus.nesterov=1"])
    with pytest.raises(ConfigError, match=r"consensus\.h_start must be an integer >= 1, or left out"):
        load_config(None, ['consensus.h_start="ten"', "consensus.h_ramp=0.1"])


def test_simulate_refuses_an_out_of_range_override_before_running() -> None:
    res = CliRunner().invoke(main, ["simulate", "--quiet", "--set", "sim.workers=-1"])
    assert res.exit_code == 2, res.output  # a usage error, not a run that trains 0 tokens
    assert "sim.workers must be an integer >= 1 (got -1)" in res.output
    assert "val_loss" not in res.output
