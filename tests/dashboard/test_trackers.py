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
