"""The simulator's cache of reconstructed versions: a stale task's base, older than every version kept, is
still returned (a fixed-quorum run at 1,000 workers hit a KeyError here)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from trainnet.aggregate.layout import ParamLayout
from trainnet.sim.simulator import Models


class _Recon:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def get(self, v: int, have):  # a version's flat parameters: all equal to v
        self.calls.append(v)
        return torch.full((6,), float(v))


def test_an_old_base_is_returned_and_the_cache_stays_bounded():
    models = Models.__new__(Models)
    layout = ParamLayout.from_shapes([("w", (2, 3))])
    models.spec, models.keep, models.flat, models.recon = SimpleNamespace(layout=layout), 2, {}, _Recon()
    for v in (5, 6, 7):
        assert float(models.params(v)["w"][0, 0]) == v
    assert float(models.params(3)["w"][0, 0]) == 3  # older than every kept version
    assert len(models.flat) <= models.keep + 1 and 7 in models.flat
    assert float(models.params(7)["w"][0, 0]) == 7 and models.recon.calls.count(7) == 1  # still cached
