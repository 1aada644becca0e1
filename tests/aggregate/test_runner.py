"""The aggregator's loop (aggregate/runner.py): a failed merge task goes back to the queue at once, and the
aggregator that failed backs off (1 s, doubling per attempt, at most a minute) instead of retrying in a loop."""

from __future__ import annotations

from typing import Any

from trainnet.aggregate.runner import MAX_BACKOFF_S, Aggregator
from trainnet.store.state import Changes
from trainnet.store.state_memory import MemoryStateStore


class Flaky:
    """A merge that raises `fails` times, then returns a result."""

    def __init__(self, fails: int) -> None:
        self.fails, self.calls = fails, 0

    def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.fails:
            raise OSError("object store unreachable")
        return {"blob": f"done-{spec['n']}"}


def store_with_one_task() -> MemoryStateStore:
    s = MemoryStateStore()
    s.commit(Changes(merge_tasks=[{"job_id": "j", "shard": 0, "phase": "stats", "spec": {"n": 1}}]),
             s.acquire_writer("t"))
    return s


def test_a_failed_task_is_handed_back_at_once_and_the_failing_aggregator_backs_off() -> None:
    s = store_with_one_task()
    merge = Flaky(fails=3)
    a = Aggregator(s, env=None, owner="a", lease_s=300.0, run=merge)
    other = Aggregator(s, env=None, owner="b", lease_s=300.0, run=Flaky(fails=0))
    assert a.step(100.0) is False and a.tasks_failed == 1 and "unreachable" in a.last_error
    (row,) = s.merge_tasks("j")
    assert row["status"] == "pending" and row["owner"] is None  # not held for lease_s (300 s)
    assert a.step(100.5) is False and merge.calls == 1  # backing off: 1 s after the first attempt
    assert a.step(101.0) is False and merge.calls == 2  # attempt 2 fails: 2 s
    assert a.step(102.9) is False and merge.calls == 2
    assert a.step(103.0) is False and merge.calls == 3  # attempt 3 fails: 4 s
    # another aggregator is not held back by a's failures: it takes the task now and finishes it
    assert other.step(103.1) is True
    (row,) = s.merge_tasks("j")
    assert row["status"] == "done" and row["result"]["blob"] == "done-1" and row["owner"] == "b"
    assert a.step(107.0) is False and merge.calls == 3  # nothing left for a


def test_the_backoff_doubles_up_to_a_minute_and_a_success_ends_it() -> None:
    s = store_with_one_task()
    merge = Flaky(fails=9)
    a = Aggregator(s, env=None, owner="a", lease_s=300.0, run=merge)
    now, waits = 0.0, []
    while merge.calls < 9:
        assert a.step(now) is False
        waits.append(a.resume_at - now)
        now = a.resume_at
    assert waits == [1, 2, 4, 8, 16, 32, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S] and a.tasks_failed == 9
    assert a.step(now) is True and a.tasks_done == 1 and merge.calls == 10
    assert s.merge_tasks("j")[0]["status"] == "done"
