"""One valid but huge q2 update among honest ones (issue 10: with the mean it moved the largest weight from 1 to
9,980). Through the real data plane (stats phase, plan, apply phase, aggregator state): with the default rule
(norm_clip:2+trimmed_mean:0.2) no weight moves further than the outer step allows for an update at the
plan's norm bound, and the hostile update changes the model by less than that bound's step."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_helpers import Harness, tiny_cfg  # noqa: E402

from trainnet.aggregate import keys  # noqa: E402
from trainnet.aggregate.arrays import read_f32  # noqa: E402

HONEST, BOOST = 7, 1e4


def merge_with(rule: str, hostile: bool) -> dict[str, Any]:
    """8 nodes each lease one task of version 0; 7 upload their trained update, the 8th its update x BOOST
    (or honestly); one merge publishes version 1. The exact weights before/after and the merge's plan."""
    h = Harness.open(cfg=tiny_cfg("consensus.quorum=8", f"consensus.aggregator={rule!r}"), seed=1)
    nodes = [h.node() for _ in range(HONEST + 1)]
    tasks = [h.lease(n) for n in nodes]
    for i, (n, task) in enumerate(zip(nodes, tasks, strict=True)):
        delta = h.honest_delta(task)
        if hostile and i == HONEST:
            delta = {k: v * BOOST for k, v in delta.items()}
        assert h.upload(n, task, h.encode(n, task, delta))["accepted"]
    h.drain()
    assert h.core.version == 1 and h.core.updates_merged == HONEST + 1
    numel = h.svc.spec.layout.numel
    theta0 = read_f32(h.svc.blobs, keys.agg(0, 0, "theta"), 0, numel)
    theta1 = read_f32(h.svc.blobs, keys.agg(0, 1, "theta"), 0, numel)
    job = next(e["data"]["job_id"] for e in h.svc.state.events_since(0, 10_000) if e["kind"] == "aggregated")
    spec = next(t["spec"] for t in h.svc.state.merge_tasks(job) if t["phase"] == "apply")
    outer = spec["outer"]
    # the first outer step (zero momentum): new = old - lr * (1 + mu) * damping * merged, |merged_i| <= bound
    step = outer["lr"] * (1 + outer["momentum"] if outer["nesterov"] else 1.0) * spec["damping"]
    return {"theta0": theta0, "theta1": theta1, "plan": spec["plan"], "step": step,
            "max_move": float((theta1 - theta0).abs().max())}


def test_one_huge_update_moves_no_weight_beyond_the_norm_bound() -> None:
    honest = merge_with("robust", hostile=False)
    attacked = merge_with("robust", hostile=True)
    undefended = merge_with("mean", hostile=True)
    plan = attacked["plan"]
    norms = plan["norms"]
    assert max(norms) > 1000 * sorted(norms)[len(norms) // 2]  # the hostile update is huge...
    assert plan["row_scale"][norms.index(max(norms))] < 1e-3  # ...and clipped to the bound
    cap = attacked["step"] * plan["bound"]
    assert attacked["max_move"] <= cap * (1 + 1e-5), (attacked["max_move"], cap)
    # the model with the attacker differs from the all-honest one by less than one bound-sized step
    shift = float((attacked["theta1"] - honest["theta1"]).abs().max())
    assert shift <= cap
    # and the bound is of the honest updates' size: 2 x the median norm
    assert plan["bound"] <= 2.0 * sorted(norms)[len(norms) // 2] * (1 + 1e-6)
    # without the defence the same attack moves weights by thousands of times more
    assert undefended["max_move"] > 100 * attacked["max_move"]
    assert torch.equal(honest["theta0"], attacked["theta0"])
