"""The decomposable robust rules, run chunk by chunk on aggregator shards from the planned row scales, against
the dense reference implementations in consensus/ applied to the whole stacked updates."""

from __future__ import annotations

import pytest
import torch
from plane_kit import Plane, delta, plane_config, tiny_corpus

from trainnet.consensus.plan import resolve
from trainnet.consensus.robust import parse_rule

NODES = [f"n{i}" for i in range(7)]


def _run(make_tiny_config, rule: str, shards: int):
    """Version 1 from a grace merge of two fresh updates; version 2 from a grace merge of five: three based on
    version 0 (stale, re-based against the published versions), two on version 1, one of them 20x too large."""
    cfg = plane_config(make_tiny_config, **{"consensus.aggregator": f'"{rule}"', "sim.codec": '"fp32"',
                                            "consensus.quorum": 6, "consensus.grace_s": 10.0})
    p = Plane(cfg, tiny_corpus(), shards=shards)
    p.join(*NODES)
    sent = {}

    def send(n: str, scale: float = 1e-2) -> None:
        spec = held[n]
        tensors = delta(p.layout, seed=int(spec.task_id[1:]) + 100, scale=scale)
        assert p.upload(spec, tensors).accepted
        sent[spec.task_id] = (spec.base_version, p.layout.flatten(tensors))

    p.at(1.0)
    held = {n: p.lease(n) for n in NODES[:5]}
    send("n0")
    send("n1")
    p.at(11.0).svc.tick(11.0)
    p.drain()
    assert p.core.version == 1
    p.at(12.0)
    held |= {n: p.lease(n) for n in NODES[5:]}
    for n in ("n2", "n3", "n4", "n5"):
        send(n)
    send("n6", scale=0.2)
    p.at(22.0).svc.tick(22.0)
    p.drain()
    assert p.core.version == 2
    return p, sent


def _expected(p: Plane, sent: dict, job_id: str, version_from: int, rule: str) -> tuple[torch.Tensor, ...]:
    """The outer step the dense reference gives: rows re-based to today's model (endpoint mode), the rule on
    the whole [n, d] matrix, damping, then Nesterov SGD from the shard's stored momentum."""
    spec = next(t["spec"] for t in p.state.merge_tasks(job_id) if t["phase"] == "apply")
    now_pub = p.shard_arrays(version_from, "pub")
    rows = []
    for u in spec["updates"]:
        base, flat = sent[u["task_id"]]
        rows.append(flat - (p.shard_arrays(base, "pub") - now_pub) if base != version_from else flat)
    rows_t = torch.stack(rows)
    weights = torch.tensor(spec["weights"], dtype=torch.float64)
    g = float(spec["damping"]) * parse_rule(resolve(rule))(rows_t, weights)
    mean = float(spec["damping"]) * (weights.to(torch.float32) @ rows_t)
    lr, mu = spec["outer"]["lr"], spec["outer"]["momentum"]
    mom = mu * p.shard_arrays(version_from, "mom") + g
    theta = p.shard_arrays(version_from, "theta") - lr * (g + mu * mom)
    return theta, mom, g, mean, spec


@pytest.mark.parametrize("rule, shards", [("robust", 1), ("robust", 3), ("norm_clip:c=0.5+mean", 2),
                                          ("median", 3), ("trimmed_mean:0.2", 2)])
def test_sharded_rule_matches_the_dense_reference(make_tiny_config, rule, shards):
    p, sent = _run(make_tiny_config, rule, shards)
    for job_id, v in (("j0000001", 0), ("j0000002", 1)):
        theta, mom, g, mean, spec = _expected(p, sent, job_id, v, rule)
        assert torch.allclose(p.shard_arrays(v + 1, "theta"), theta, rtol=0, atol=2e-6), (job_id, rule)
        assert torch.allclose(p.shard_arrays(v + 1, "mom"), mom, rtol=0, atol=2e-6), (job_id, rule)
    # the second merge really had something to be robust about: unequal weights, and a rule that moved away
    # from the plain weighted mean (so the comparison above is not mean against mean)
    assert len(set(spec["weights"])) == 2 and len(spec["updates"]) == 5
    assert float((g - mean).abs().max()) > 50 * 2e-6
    if rule.startswith(("robust", "norm_clip")):
        plan = spec["plan"]
        assert min(plan["row_scale"]) < 1.0  # the large update was clipped
