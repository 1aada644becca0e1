"""Optional trackers: off by default, TensorBoard writes real event files, unknown names are refused."""

from __future__ import annotations

import pytest

from trainnet.dashboard.trackers import NullTracker, make_tracker


def test_default_is_off(tmp_path):
    assert isinstance(make_tracker(None, tmp_path), NullTracker)
    assert isinstance(make_tracker("none", tmp_path), NullTracker)
    assert not any(tmp_path.iterdir())


def test_tensorboard_writes_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = make_tracker("tensorboard", tmp_path)
    for step, loss in enumerate([5.5, 4.0, 3.2]):
        tracker.log(step, {"val_loss": loss})
    tracker.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [round(e.value, 3) for e in acc.Scalars("val_loss")] == [5.5, 4.0, 3.2]


def test_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tracker 'mlflow'"):
        make_tracker("mlflow", tmp_path)


def test_coordinator_evaluator_logs_each_version_to_the_tracker(tiny_cfg, tmp_path):
    """What `trainnet coordinator --tracker tensorboard` wires: every evaluated version's held-out loss."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainnet.server.runtime import Runtime
    from trainnet.sim.simulator import sim_limits

    rt = Runtime.open(tiny_cfg, "memory:", "memory:", sim_limits(tiny_cfg), sync=True, clock=lambda: 0.0)
    rt.drain(0.0)  # version 0 published
    rt.evaluator.tracker = make_tracker("tensorboard", tmp_path)
    assert rt.evaluate()
    rt.evaluator.tracker.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    (point,) = acc.Scalars("val_loss")
    assert point.step == 0 and abs(point.value - rt.svc.state.val_curve()[0]["val_loss"]) < 1e-5
