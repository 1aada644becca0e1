"""Error feedback: nothing is lost over rounds, state survives a restart, failures leave state intact."""

from __future__ import annotations

import pytest
import torch

from trainnet.codec import ErrorFeedback, parse_codec
from trainnet.codec.feedback import STATE_FILE


def _rounds(seed: int, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(40, 50, generator=g) * 1e-2, "b": torch.randn(37, generator=g)} for _ in range(n)]


@pytest.mark.parametrize("spec", ["topk:0.015+q2", "dct64:top4+sign", "q2:sr", "sign", "topk:0.05:c256"])
def test_sum_sent_plus_residual_equals_sum_meant(spec: str) -> None:
    ef = ErrorFeedback(spec)
    rounds = _rounds(0, 12)
    total_sent = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in rounds[0].items()}
    for delta in rounds:
        encoded, sent = ef.compress(delta)
        assert set(encoded) == set(delta)
        for k in delta:
            # What is "sent" is exactly what the receiver will decode.
            assert torch.equal(parse_codec(spec).decode(encoded[k]), sent[k])
            total_sent[k] += sent[k].double()
    for k in total_sent:
        meant = sum(d[k].double() for d in rounds)
        assert torch.allclose(total_sent[k] + ef.residuals[k].double(), meant, atol=1e-5, rtol=0)
        # and compression genuinely dropped something, so the residual is doing work
        assert ef.residuals[k].abs().sum() > 0


def test_error_feedback_transmits_more_than_plain_compression() -> None:
    spec = "topk:0.02:c512"
    rounds = _rounds(1, 30)
    meant = sum(d["w"] for d in rounds)
    ef = ErrorFeedback(spec)
    with_ef = sum(ef.compress(d)[1]["w"] for d in rounds)
    c = parse_codec(spec)
    without = sum(c.decode(c.encode(d["w"])) for d in rounds)
    assert (with_ef - meant).norm() < 0.8 * (without - meant).norm()


def test_save_load_roundtrip_and_continue(tmp_path) -> None:
    rounds = _rounds(2, 4)
    a = ErrorFeedback("topk:0.015+q2")
    for d in rounds[:2]:
        a.compress(d)
    path = a.save(tmp_path / "state")
    assert path.name == STATE_FILE and not (tmp_path / "state" / (STATE_FILE + ".tmp")).exists()
    b = ErrorFeedback.load(tmp_path / "state", "topk:0.015+q2")
    assert b.residuals.keys() == a.residuals.keys()
    assert all(torch.equal(a.residuals[k], b.residuals[k]) for k in a.residuals)
    sa, sb = a.compress(rounds[2])[1], b.compress(rounds[2])[1]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ErrorFeedback.load(tmp_path / "missing", "q4").residuals == {}


def test_failure_leaves_residuals_unchanged() -> None:
    ef = ErrorFeedback("q4")
    ef.compress({"a": torch.ones(10), "b": torch.arange(5.0)})
    before = {k: v.clone() for k, v in ef.residuals.items()}
    with pytest.raises(ValueError, match="NaN"):
        ef.compress({"a": torch.randn(10), "b": torch.tensor([1.0, float("nan"), 0, 0, 0])})
    assert all(torch.equal(before[k], ef.residuals[k]) for k in before)
    with pytest.raises(ValueError, match="shape"):
        ef.compress({"a": torch.ones(11)})
    ef.reset()
    assert ef.residuals == {} and ef.residual_norm() == 0.0
