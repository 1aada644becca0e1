"""One conformance suite for every StateStore backend (memory, SQLite, PostgreSQL): the memory store is the
reference, and every test here runs against each backend through the `state_store` fixture.

    PYTHONPATH=$PWD/src python -m pytest -q tests/store
"""

from __future__ import annotations

import copy
import random
import threading
import time
from collections.abc import Callable

import pytest
from store_child import Child

from trainnet.store.state import Changes, Fenced, StateStore, WriterLocked, open_state_store


def _task(job: str, shard: int, phase: str = "reduce", **spec: object) -> dict:
    return {"job_id": job, "shard": shard, "phase": phase, "spec": {"rule": "trimmed_mean", **spec}}


def _ev(i: int, kind: str = "step") -> dict:
    return {"time": float(i), "kind": kind, "data": {"i": i}}


def _snapshot(store: StateStore) -> tuple:
    """Everything a commit can change, to compare before/after."""
    return (store.load_state(), store.events_since(), store.log_list("updates"), store.log_count("updates"),
            store.merge_tasks("j"))


# ---------------------------------------------------------------------------------------------- core state
def test_empty_store_loads_none(state_store: StateStore) -> None:
    s = state_store
    assert s.load_state() is None
    assert s.events_since() == [] and s.val_curve() == [] and s.traffic() == {}
    assert s.log_get("updates", "u1") is None and s.log_list("updates") == [] and s.log_count("updates") == 0
    assert s.get_meta("run") is None
    assert s.merge_tasks("j") == [] and s.claim_merge_task("agg", now=0.0, lease_s=10.0) is None
    s.health_check()
    # Logs and events alone are not core state: it still loads as None.
    fence = s.acquire_writer("t")
    s.commit(Changes(logs={"updates": {"u1": {"a": 1}}}, events=[_ev(1)]), fence)
    assert s.load_state() is None


def test_commit_load_round_trip(state_store: StateStore) -> None:
    s = state_store
    fence = s.acquire_writer("t")
    meta = {"version": 3, "queue": [4, 5, 6], "counters": {"leases": 12}, "odd": [1.5, None, True, "é\u2603"]}
    docs = {"nodes": {"n1": {"pub": "ab", "tokens": 10}, "n2": {"pub": "cd", "tokens": 0}},
            "leases": {"l1": {"node": "n1", "shard": 4, "deadline": 12.5}},
            "buffer": {"u1": {"node": "n2", "weight": 0.25, "blob": "updates/u1"}}}
    s.commit(Changes(meta=meta, docs=docs), fence)
    assert s.load_state() == {"meta": meta, "docs": docs}
    # A later commit touches only its rows; the others stay as they were.
    s.commit(Changes(meta={**meta, "version": 4}, docs={"nodes": {"n1": {"pub": "ab", "tokens": 20}},
                                                          "leases": {"l2": {"node": "n2"}}}), fence)
    want = copy.deepcopy(docs)
    want["nodes"]["n1"]["tokens"] = 20
    want["leases"]["l2"] = {"node": "n2"}
    assert s.load_state() == {"meta": {**meta, "version": 4}, "docs": want}
    # A loaded state is a fresh copy: changing it changes nothing stored.
    loaded = s.load_state()
    loaded["docs"]["nodes"].clear()
    assert s.load_state()["docs"]["nodes"] == want["nodes"]


def test_deletes(state_store: StateStore) -> None:
    s = state_store
    fence = s.acquire_writer("t")
    s.commit(Changes(docs={"nodes": {"a": {"x": 1}, "b": {"x": 2}}, "leases": {"l": {"n": "a"}}}), fence)
    s.commit(Changes(docs={"nodes": {"a": None, "missing": None}}), fence)
    assert s.load_state() == {"meta": None, "docs": {"nodes": {"b": {"x": 2}}, "leases": {"l": {"n": "a"}}}}
    # A collection whose rows are all gone is left out; with no meta and no rows the state is None again.
    s.commit(Changes(docs={"leases": {"l": None}}), fence)
    assert s.load_state() == {"meta": None, "docs": {"nodes": {"b": {"x": 2}}}}
    s.commit(Changes(docs={"nodes": {"b": None}}), fence)
    assert s.load_state() is None
    s.commit(Changes(meta={"v": 1}), fence)
    assert s.load_state() == {"meta": {"v": 1}, "docs": {}}


def test_fold_equals_applying_in_order(new_store: Callable[[], StateStore]) -> None:
    steps = [
        Changes(meta={"v": 1}, docs={"nodes": {"a": {"x": 1}, "b": {"x": 1}}}, logs={"updates": {"u1": {"k": 1}}},
                events=[_ev(1)], merge_tasks=[_task("j", 0)]),
        Changes(docs={"nodes": {"a": None, "c": {"x": 3}}, "leases": {"l": {"n": "b"}}},
                logs={"updates": {"u1": {"k": 2}, "u2": {"k": 3}}}, events=[_ev(2), _ev(3)]),
        Changes(meta={"v": 3}, docs={"nodes": {"a": {"x": 4}}, "leases": {"l": None}}, events=[_ev(4)],
                merge_tasks=[_task("j", 1), _task("j", 0, again=True)]),
    ]
    one_by_one, folded_store = new_store(), new_store()
    fence = one_by_one.acquire_writer("t")
    for step in steps:
        one_by_one.commit(step, fence)
    folded = Changes()
    for step in steps:
        folded.fold(step)
    folded_store.commit(folded, folded_store.acquire_writer("t"))
    assert _snapshot(folded_store) == _snapshot(one_by_one)
    assert one_by_one.load_state() == {"meta": {"v": 3}, "docs": {"nodes": {"a": {"x": 4}, "b": {"x": 1},
                                                                            "c": {"x": 3}}}}
    assert [t["shard"] for t in one_by_one.merge_tasks("j")] == [1, 0]  # a re-created task goes to the back


@pytest.mark.parametrize("bad", [
    Changes(meta={"loss": float("nan")}),
    Changes(docs={"nodes": {"ok": {"a": 1}, "bad": {"tags": {1, 2}}}}),
    Changes(docs={"nodes": {"ok": {"a": 1}}}, logs={"updates": {"u": {"v": float("inf")}}}),
    Changes(docs={"nodes": {"ok": {"a": 1}}}, events=[{"time": 1.0, "kind": "k", "data": {1, 2}}]),
    Changes(docs={"nodes": {"ok": {"a": 1}}}, merge_tasks=[_task("j", 0, scale=float("nan"))]),
], ids=["nan-meta", "set-doc", "inf-log", "set-event", "nan-task"])
def test_non_encodable_document_applies_nothing(state_store: StateStore, bad: Changes) -> None:
    s = state_store
    fence = s.acquire_writer("t")
    s.commit(Changes(meta={"v": 1}, docs={"nodes": {"n": {"a": 0}}}, logs={"updates": {"u0": {}}},
                     events=[_ev(1)], merge_tasks=[_task("j", 9)]), fence)
    before = _snapshot(s)
    with pytest.raises((ValueError, TypeError)):
        s.commit(bad, fence)
    assert _snapshot(s) == before
    s.commit(Changes(events=[_ev(2)]), fence)  # the store works on, and no event id was spent
    assert [e["id"] for e in s.events_since()] == [1, 2]


def test_non_encodable_values_outside_commit(state_store: StateStore) -> None:
    s = state_store
    with pytest.raises(ValueError):
        s.set_meta("x", float("nan"))
    with pytest.raises(ValueError):
        s.add_val_point(1, 10, float("nan"), 0.0)
    assert s.get_meta("x") is None and s.val_curve() == []


# ---------------------------------------------------------------------------------------------- logs, events
def test_logs(state_store: StateStore) -> None:
    s = state_store
    fence = s.acquire_writer("t")
    for i in range(5):
        s.commit(Changes(logs={"updates": {f"u{i}": {"i": i}}}), fence)
    s.commit(Changes(logs={"audits": {"a0": {"ok": True}}, "versions": {"v1": {"n": 1}, "v2": {"n": 2}}}), fence)
    assert s.log_list("updates") == [{"i": i} for i in (4, 3, 2, 1, 0)]
    assert s.log_list("updates", limit=2) == [{"i": 4}, {"i": 3}]
    assert s.log_list("updates", limit=2, offset=2) == [{"i": 2}, {"i": 1}]
    assert s.log_list("updates", offset=10) == []
    assert s.log_list("versions") == [{"n": 2}, {"n": 1}]  # rows of one commit: later in the dict is newer
    assert (s.log_count("updates"), s.log_count("audits"), s.log_count("nothing")) == (5, 1, 0)
    assert s.log_get("updates", "u3") == {"i": 3}
    assert s.log_get("updates", "nope") is None and s.log_get("audits", "u3") is None
    # An upsert replaces the document but keeps the row where it was first inserted.
    s.commit(Changes(logs={"updates": {"u1": {"i": 1, "verdict": "ok"}}}), fence)
    assert s.log_list("updates") == [{"i": 4}, {"i": 3}, {"i": 2}, {"i": 1, "verdict": "ok"}, {"i": 0}]
    assert s.log_count("updates") == 5


def test_event_ids_and_order_across_commits(state_store: StateStore) -> None:
    s = state_store
    fence = s.acquire_writer("t")
    s.commit(Changes(events=[_ev(1, "a"), _ev(2, "b")]), fence)
    s.commit(Changes(events=[_ev(3, "c")]), fence)
    s.commit(Changes(meta={"v": 1}), fence)
    with pytest.raises(Fenced):
        s.commit(Changes(events=[_ev(99)]), fence + 1)
    s.commit(Changes(events=[_ev(4, "d")]), fence)
    events = s.events_since()
    assert events == [{"id": i, "time": float(i), "kind": k, "data": {"i": i}}
                      for i, k in zip(range(1, 5), "abcd", strict=True)]
    assert [e["id"] for e in s.events_since(2)] == [3, 4]
    assert [e["id"] for e in s.events_since(0, limit=2)] == [1, 2]
    assert s.events_since(4) == []


def test_val_curve_traffic_and_meta(state_store: StateStore) -> None:
    s = state_store
    s.add_val_point(2, 200, 1.5, 20.0)
    s.add_val_point(1, 100, 2.0, 10.0, extra={"ppl": 7.4})
    s.add_val_point(2, 250, 1.4, 25.0)  # the same version again replaces the point
    assert s.val_curve() == [{"version": 1, "tokens": 100, "val_loss": 2.0, "time": 10.0, "ppl": 7.4},
                             {"version": 2, "tokens": 250, "val_loss": 1.4, "time": 25.0}]
    s.add_traffic({"up": 10, "down": 0})
    s.add_traffic({"up": 5, "down": 3})
    s.add_traffic({})
    assert s.traffic() == {"up": 15, "down": 3}
    s.set_meta("run", {"name": "r1"})
    s.set_meta("n", 3)
    s.set_meta("run", [1, 2])
    assert (s.get_meta("run"), s.get_meta("n"), s.get_meta("missing")) == ([1, 2], 3, None)


# ---------------------------------------------------------------------------------------------- fencing
def test_writer_token_and_fencing_in_process(state_store: StateStore) -> None:
    s = state_store
    t1 = s.acquire_writer("first")
    with pytest.raises(WriterLocked, match="first"):
        s.acquire_writer("second")
    s.release_writer()
    t2 = s.acquire_writer("second")
    assert t2 > t1
    with pytest.raises(Fenced, match=f"{t1}.*stale"):
        s.commit(Changes(meta={"v": 1}, events=[_ev(1)], merge_tasks=[_task("j", 0)]), t1)
    assert _snapshot(s) == (None, [], [], 0, [])
    s.commit(Changes(meta={"v": 2}), t2)
    assert s.load_state() == {"meta": {"v": 2}, "docs": {}}


def test_second_store_object_is_locked_out(store_url: str, state_store: StateStore) -> None:
    state_store.acquire_writer("coordinator-a")
    other = open_state_store(store_url)
    try:
        with pytest.raises(WriterLocked, match="coordinator-a"):
            other.acquire_writer("coordinator-b")
        state_store.release_writer()
        assert other.acquire_writer("coordinator-b") >= 2
    finally:
        other.close()


def _acquire_within(store: StateStore, owner: str, timeout_s: float = 20.0) -> int:
    # The OS frees a flock at once; a PostgreSQL server frees an advisory lock when it notices the session end.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return store.acquire_writer(owner)
        except WriterLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_writer_lock_across_processes_and_after_kill9(store_url: str, state_store: StateStore) -> None:
    holder = Child("hold", store_url, "holder-proc")
    try:
        held = int(holder.line())
        with pytest.raises(WriterLocked) as err:
            state_store.acquire_writer("me")
        msg = str(err.value)
        assert "holder-proc" in msg and f"pid {holder.pid}" in msg and "since" in msg, msg
        holder.kill9()
        token = _acquire_within(state_store, "me")
        assert token > held
        with pytest.raises(Fenced):
            state_store.commit(Changes(meta={"from": "the dead holder"}), held)
        assert state_store.load_state() is None
        state_store.commit(Changes(meta={"from": "me"}), token)
        assert state_store.load_state()["meta"] == {"from": "me"}
    finally:
        holder.close()


def test_kill9_durability(store_url: str, state_store: StateStore) -> None:
    rng = random.Random(store_url)
    writer = Child("commit", store_url)
    try:
        printed = [int(writer.line()) for _ in range(rng.randint(5, 40))]
        time.sleep(rng.uniform(0.0, 0.05))
        writer.kill9()
        printed += [int(x) for x in writer.rest()]  # lines it wrote before it died
    finally:
        writer.close()
    state = state_store.load_state()
    assert state is not None
    last = state["meta"]["last"]
    assert printed == list(range(1, len(printed) + 1)) and last >= printed[-1]
    # Each commit applied entirely or not at all: exactly the numbers 1..last, each once in docs/logs/events.
    assert sorted(int(k) for k in state["docs"]["n"]) == list(range(1, last + 1))
    assert [e["data"]["i"] for e in state_store.events_since(limit=10_000)] == list(range(1, last + 1))
    assert [e["id"] for e in state_store.events_since(limit=10_000)] == list(range(1, last + 1))
    assert state_store.log_count("n") == last and state_store.log_get("n", str(printed[-1])) == {"i": printed[-1]}


# ---------------------------------------------------------------------------------------------- merge tasks
def test_merge_tasks_claim_lapse_and_finish(state_store: StateStore) -> None:
    s = state_store
    fence = s.acquire_writer("t")
    s.commit(Changes(merge_tasks=[_task("j", 0), _task("j", 1)]), fence)
    s.commit(Changes(merge_tasks=[_task("j", 0, "apply"), _task("k", 0)]), fence)
    first = s.claim_merge_task("agg-a", now=100.0, lease_s=10.0)
    assert first == {"job_id": "j", "shard": 0, "phase": "reduce", "spec": {"rule": "trimmed_mean"}, "attempt": 1}
    got = [s.claim_merge_task("agg-a", now=101.0, lease_s=10.0) for _ in range(3)]
    assert [(t["job_id"], t["shard"], t["phase"]) for t in got] == [("j", 1, "reduce"), ("j", 0, "apply"),
                                                                      ("k", 0, "reduce")]
    assert s.claim_merge_task("agg-b", now=105.0, lease_s=10.0) is None  # all claimed, none lapsed
    # The first claim lapsed at 110: another aggregator takes it over, one attempt later.
    again = s.claim_merge_task("agg-b", now=110.5, lease_s=10.0)
    assert (again["job_id"], again["shard"], again["phase"], again["attempt"]) == ("j", 0, "reduce", 2)
    assert s.finish_merge_task("j", 0, "reduce", "agg-a", {"blob": "stale"}) is False
    assert s.finish_merge_task("j", 7, "reduce", "agg-b", {}) is False
    before = s.merge_tasks("j")
    assert before[0]["status"] == "claimed" and before[0]["owner"] == "agg-b" and before[0]["result"] is None
    assert s.finish_merge_task("j", 0, "reduce", "agg-b", {"blob": "shards/j/0"}) is True
    assert s.finish_merge_task("j", 0, "reduce", "agg-b", {"blob": "twice"}) is False
    tasks = s.merge_tasks("j")
    assert [(t["shard"], t["phase"], t["status"], t["owner"]) for t in tasks] == [
        (0, "reduce", "done", "agg-b"), (1, "reduce", "claimed", "agg-a"), (0, "apply", "claimed", "agg-a")]
    assert tasks[0]["result"] == {"blob": "shards/j/0"} and tasks[0]["spec"] == {"rule": "trimmed_mean"}
    # Finished tasks are never handed out again; lapsed unfinished ones are, oldest first.
    later = [s.claim_merge_task("agg-c", now=1e9, lease_s=10.0) for _ in range(4)]
    assert [(t["job_id"], t["shard"], t["phase"], t["attempt"]) for t in later[:3]] == [
        ("j", 1, "reduce", 2), ("j", 0, "apply", 2), ("k", 0, "reduce", 2)]
    assert later[3] is None
    # A finished job's rows go; another job's stay, and a new task after the drop is queued normally.
    assert s.drop_merge_tasks("j") == 3 and s.merge_tasks("j") == [] and s.drop_merge_tasks("j") == 0
    assert [t["shard"] for t in s.merge_tasks("k")] == [0]
    s.commit(Changes(merge_tasks=[_task("m", 0)]), fence)
    assert s.claim_merge_task("agg-d", now=1e9, lease_s=10.0)["job_id"] == "m"


def _claim_all(store: StateStore, owner: str, out: list[tuple[str, int, str]], start: threading.Barrier) -> None:
    start.wait(timeout=30)
    while (t := store.claim_merge_task(owner, now=1000.0, lease_s=1e6)) is not None:
        out.append((t["job_id"], t["shard"], t["phase"]))


def _commit_tasks(store: StateStore, n: int) -> set[tuple[str, int, str]]:
    store.commit(Changes(merge_tasks=[_task("j", i) for i in range(n)]), store.acquire_writer("t"))
    return {("j", i, "reduce") for i in range(n)}


def test_concurrent_claims_threads(state_store: StateStore) -> None:
    s = state_store
    want = _commit_tasks(s, 60)
    n = 4
    # Each SQL claimer gets a store (connection) of its own, like separate aggregators; memory has one store.
    stores = [s if s.url == "memory:" else open_state_store(s.url) for _ in range(n)]
    outs: list[list[tuple[str, int, str]]] = [[] for _ in range(n)]
    start = threading.Barrier(n)
    threads = [threading.Thread(target=_claim_all, args=(stores[i], f"agg-{i}", outs[i], start)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for other in stores:
        if other is not s:
            other.close()
    got = [x for out in outs for x in out]
    assert len(got) == len(set(got)) and set(got) == want


def test_concurrent_claims_processes(store_url: str, state_store: StateStore) -> None:
    want = _commit_tasks(state_store, 80)
    children = [Child("claim", store_url, f"agg-{i}") for i in range(2)]
    try:
        for c in children:
            assert c.line() == "ready"
        for c in children:
            c.send("go\n")
        per_child = [[tuple(line.split()) for line in c.rest()] for c in children]
    finally:
        for c in children:
            c.close()
    assert all(per_child), "both claimers should have taken tasks while the other ran"
    keys = [(j, int(shard), phase) for got in per_child for j, shard, phase in got]
    assert len(keys) == len(set(keys)) and set(keys) == want
