"""Simulator security integration: attacks run, the verifier bans cheaters and never honest nodes,
banned nodes are refused, the JSON carries the security metrics, and no attack means no change."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from trainnet.cli import main
from trainnet.core import Coordinator
from trainnet.model.gpt import GPT
from trainnet.protocol.messages import LeaseRequest, Register
from trainnet.server.runspec import coordinator_config
from trainnet.sim.adversary import Adversary, choose_malicious, parse_spec
from trainnet.sim.simulator import simulate
from trainnet.train.local import params_of


def test_attack_with_no_malicious_workers_is_the_clean_run(small_corpus, make_tiny_config):
    clean = simulate(make_tiny_config(), corpus=small_corpus)
    same = simulate(make_tiny_config(**{"sim.attack": "sign_flip", "sim.malicious": 0.0}), corpus=small_corpus)
    assert same["final_val_loss"] == clean["final_val_loss"] and same["bytes_up_total"] == clean["bytes_up_total"]
    assert same["malicious_nodes"] == [] and same["honest_banned"] == 0


def test_plain_mean_is_hurt_by_scaled_sign_flip(small_corpus, make_tiny_config):
    off = {"consensus.aggregator": '"mean"', "consensus.verify_rate": 0.0}  # every defence turned off explicitly
    clean = simulate(make_tiny_config(**off), corpus=small_corpus)
    bad = simulate(make_tiny_config(**off, **{"sim.attack": '"sign_flip:s=4"', "sim.malicious": 0.25}),
                   corpus=small_corpus)
    assert bad["final_val_loss"] > clean["final_val_loss"] + 0.5
    assert len(bad["malicious_nodes"]) == 1 and bad["banned_nodes"] == []  # no verification: nobody is banned


@pytest.mark.parametrize("attack", ["sign_flip", "fewer_steps", "random_shard", "zeros"])
def test_verification_bans_cheaters_and_no_honest_node(small_corpus, make_tiny_config, attack):
    cfg = make_tiny_config(**{"sim.attack": attack, "sim.malicious": 0.5, "consensus.verify_rate": 0.5,
                              "sim.tokens": 30000})
    r = simulate(cfg, corpus=small_corpus)
    assert r["honest_banned"] == 0 and r["cheaters_banned"] >= 1
    assert r["audits_passed"] > 0 and r["audits_failed"] == r["cheaters_banned"]
    for b in r["banned_nodes"]:
        assert b["malicious"] and b["evidence"]["reason"] == "update_mismatch"
        rep = r["reputation"][b["node_id"]]
        assert rep["banned"] and rep["score"] == 0.0
    honest = [v for v in r["reputation"].values() if not v["malicious"]]
    assert all(v["audits_failed"] == 0 and not v["banned"] for v in honest)
    assert 0 < r["verify_cost"] < 1 and r["verify_steps"] % cfg.consensus.h == 0
    # the outer step of each cheater's ban, recorded as it happened
    assert len(r["rounds_to_ban"]) == r["cheaters_banned"]
    assert all(0 <= x <= r["outer_steps"] for x in r["rounds_to_ban"])


def test_banned_node_is_refused_and_gets_no_more_work(small_corpus, make_tiny_config):
    cfg = make_tiny_config(**{"sim.attack": "sign_flip", "sim.malicious": 0.5, "consensus.verify_rate": 1.0})
    r = simulate(cfg, corpus=small_corpus)
    assert r["cheaters_banned"] == 2 and r["honest_banned"] == 0
    for b in r["banned_nodes"]:
        node = next(n for n in r["nodes"] if n["node_id"] == b["node_id"])
        # with every task audited, a cheater is banned on its first audited task
        assert node["tasks_done"] <= 2


def test_honest_run_with_lossy_codec_and_full_audit_bans_nobody(small_corpus, make_tiny_config):
    cfg = make_tiny_config(**{"consensus.verify_rate": 1.0, "sim.codec": '"topk:0.1+q4"', "sim.dropout": 0.2,
                              "sim.lag_s": 2.0})
    r = simulate(cfg, corpus=small_corpus)
    assert r["audits_failed"] == 0 and r["banned_nodes"] == [] and r["audits_passed"] >= r["updates_accepted"] - 4


def test_backdoor_run_reports_asr(small_corpus, make_tiny_config):
    cfg = make_tiny_config(**{"sim.attack": '"backdoor:rate=0.2"', "sim.malicious": 0.5, "sim.asr_prompts": 8})
    r = simulate(cfg, corpus=small_corpus)
    assert 0.0 <= r["backdoor_asr"] <= 1.0 and 0.0 <= r["backdoor_base_rate"] <= 1.0


def test_non_iid_gives_each_node_its_own_block_of_shards(small_corpus, make_tiny_config):
    cfg = make_tiny_config(**{"sim.iid": "false"})
    coord = Coordinator.fresh(coordinator_config(cfg), small_corpus.manifest, 1000, now=0.0)
    coord.merge_applied(next(iter(coord.jobs)), "versions/v00000000.json", 0.0)  # version 0 is published
    assert coord.cfg.shard_groups == cfg.sim.workers
    seen: dict[str, set[int]] = {}
    for n in range(cfg.sim.workers):
        coord.register(Register(f"w{n}"), 0.0)
    for _ in range(3):
        for n in range(cfg.sim.workers):
            spec = coord.lease(LeaseRequest(f"w{n}"), 0.0)
            seen.setdefault(f"w{n}", set()).add(spec.shard_id)
            coord._drop_lease(spec.task_id)  # hand the lease back without submitting (nothing requeued)
    blocks = list(seen.values())
    assert all(a.isdisjoint(b) for i, a in enumerate(blocks) for b in blocks[i + 1:])
    ids = small_corpus.manifest.ids("train")
    assert max(ids.index(s) for s in blocks[0]) < min(ids.index(s) for s in blocks[-1])


def test_adversary_helpers(small_corpus):
    assert parse_spec("fewer_steps:frac=0.25") == ("fewer_steps", {"frac": 0.25})
    with pytest.raises(ValueError):
        parse_spec("nope")
    assert len(choose_malicious(10, 0.3, 0)) == 3 and choose_malicious(10, 0.3, 0) == choose_malicious(10, 0.3, 0)
    adv = Adversary("alie", workers=10, malicious=0.3, quorum=4, seed=0, corpus=small_corpus)
    assert adv.n_mal == 1 and adv.window.maxlen == 4


def test_cli_attack_flags_write_security_json(tmp_path):
    out = tmp_path / "r.json"
    args = ["simulate", "--quiet", "--workers", "4", "--tokens", "8000", "--attack", "sign_flip", "--malicious",
            "0.25", "--aggregator", "median", "--verify-rate", "1.0", "--non-iid", "--json", str(out)]
    args += [f"--set={k}" for k in [
        "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "data.max_bytes=524288",
        "data.shard_bytes=32768", "data.val_every=4", "consensus.h=5", "inner.batch_size=4", "sim.eval_batches=2"]]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["config"]["consensus"]["aggregator"] == "median" and data["config"]["sim"]["iid"] is False
    assert data["honest_banned"] == 0 and data["cheaters_banned"] == 1 and "security:" in res.output


def test_backdoor_boost_scales_the_poisoned_update(small_corpus):
    """backdoor:boost=k (model replacement) sends k times the update trained on the poisoned shard."""
    from trainnet.protocol.messages import TaskSpec
    from trainnet.train.local import TaskHParams

    model = GPT(make_model_cfg())
    base = params_of(model)
    sid = small_corpus.manifest.ids("train")[0]
    hp = TaskHParams(steps=2, lr=3e-3, batch_size=4, seq_len=32)
    spec = TaskSpec("r", "t0", "w000", 0, sid, small_corpus.manifest.entry(sid).sha256,
                    small_corpus.manifest.root_hash, 3, hp.to_dict(), 2 * 4 * 32, 0.0, 1e9)
    plain = Adversary("backdoor:rate=0.5", workers=4, malicious=1.0, quorum=2, seed=0, corpus=small_corpus)
    boosted = Adversary("backdoor:rate=0.5,boost=3", workers=4, malicious=1.0, quorum=2, seed=0, corpus=small_corpus)
    d1, steps1 = plain.update(model, spec, base, 0)
    d3, steps3 = boosted.update(model, spec, base, 0)
    assert steps1 == steps3 == 2
    for k in base:
        assert torch.allclose(d3[k], 3 * d1[k], rtol=1e-5, atol=1e-7)
    assert any(float(v.abs().max()) > 0 for v in d1.values())


def make_model_cfg():
    from trainnet.model.gpt import GPTConfig

    return GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)


def test_refused_stale_updates_do_not_break_an_honest_chain(small_corpus, make_tiny_config):
    """A refused (stale) upload's contribution leaves the virtual worker's residual, as the real worker's: the
    next upload continues the coordinator's chain (a fixed-quorum run at 1,000 workers banned 266 honest nodes
    for a 'broken' chain before)."""
    cfg = make_tiny_config(**{"sim.workers": 10, "consensus.quorum": 1, "consensus.target_staleness": 0,
                              "consensus.max_staleness": 1, "consensus.verify_rate": 0.3, "sim.codec": "q2",
                              "sim.speed_sigma": 0.5, "sim.tokens": 40000})
    r = simulate(cfg, corpus=small_corpus)
    assert r["stale_refusals"] > 0
    assert r["honest_banned"] == 0, [b["reason"] for b in r["banned_nodes"]]
