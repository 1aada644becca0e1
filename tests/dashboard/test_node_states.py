"""A finished run reads as finished: run state and end time, nodes `finished` (idle since the end) or `gone`
(stopped before it), not "active, last seen 23 min ago". The view logic in-process over a small state dir,
then the page itself in headless Chromium against that view."""

from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from trainnet.dashboard.data import run_view
from trainnet.dashboard.static_files import STATIC_DIR
from trainnet.store.state import Changes
from trainnet.store.state_memory import MemoryStateStore

T0, END, LEASE_S = 1000.0, 2000.0, 60.0
AFTER = END + 23 * 60  # the user opens the dashboard 23 minutes after the run ended


def _node(node_id: str, last_seen: float, **extra: Any) -> dict[str, Any]:
    return {"node_id": node_id, "registered_at": T0, "last_seen": last_seen, "tokens_accepted": 100,
            "updates_accepted": 1, "updates_rejected": 0, "leases_expired": 0, "reject_reasons": {},
            "banned": False, "ban_reason": "", "audits_passed": 0, "audits_failed": 0, "info": {}, **extra}


NODES = [_node("stayed", END - 10), _node("left", 1200.0), _node("banned", END - 5, banned=True, ban_reason="x")]


def _store(done: bool, done_at: float | None = END) -> MemoryStateStore:
    """A state store as a coordinator leaves it: three nodes, one version per node's upload, and (when done)
    the end time of the run."""
    store = MemoryStateStore()
    fence = store.acquire_writer("test")
    fp = {"coordinator": {"run_id": "r1", "lease_s": LEASE_S, "max_staleness": 8, "tokens_target": 300}}
    store.set_meta("fingerprint", fp)
    meta = {"done": done, "done_at": done_at if done else None, "tokens_accepted": 300, "version": 3}
    versions = {f"v{i + 1:08d}": {"version": i + 1, "created": n["last_seen"], "tokens": 100 * (i + 1)}
                for i, n in enumerate(sorted(NODES, key=lambda n: n["last_seen"]))}
    store.commit(Changes(meta=meta, docs={"nodes": {n["node_id"]: n for n in NODES}}, logs={"versions": versions}),
                 fence)
    return store


def _live(done: bool) -> dict[str, Any]:
    """What live_snapshot(svc) returns for the same run (the coordinator is still serving)."""
    status = {"run_id": "r1", "model_version": 3, "tokens": 300, "tokens_target": 300, "done": done}
    return {"status": status, "nodes": NODES, "leases": [], "traffic": {}, "started_at": T0,
            "done_at": END if done else None}


@pytest.mark.parametrize("live", [False, True], ids=["offline", "live"])
def test_finished_run_reads_finished(tmp_path: Path, live: bool) -> None:
    v = run_view(_store(done=True), AFTER, _live(True) if live else None)
    assert (v["done"], v["run_state"], v["ended_at"], v["ended_ago_s"]) == (True, "finished", END, 23 * 60)
    rows = {r["node_id"]: r for r in v["contributors"]}
    assert {k: r["state"] for k, r in rows.items()} == {"stayed": "finished", "left": "gone", "banned": "gone"}
    assert {k: r["state_at_end"] for k, r in rows.items()} == {"stayed": "active", "left": "dropped",
                                                                 "banned": "dropped"}
    assert rows["stayed"]["last_seen_before_end_s"] == 10 and rows["left"]["last_seen_before_end_s"] == 800
    assert rows["stayed"]["last_seen_ago_s"] == AFTER - (END - 10)  # still the truth, only shown differently
    n = v["nodes"]
    assert (n["finished"], n["gone"], n["total"], n["banned"]) == (1, 2, 3, 1)
    # the active / lagging / dropped counts are the states at the end (/metrics and the report read them)
    assert (n["active"], n["lagging"], n["dropped"]) == (1, 0, 2)


def test_running_run_keeps_live_states(tmp_path: Path) -> None:
    v = run_view(_store(done=False), END)
    assert (v["run_state"], v["ended_at"], v["ended_ago_s"]) == ("running", None, None)
    rows = {r["node_id"]: r for r in v["contributors"]}
    assert {k: r["state"] for k, r in rows.items()} == {"stayed": "active", "left": "dropped", "banned": "dropped"}
    assert all(r["state_at_end"] is None and r["last_seen_before_end_s"] is None for r in rows.values())
    assert (v["nodes"]["finished"], v["nodes"]["gone"], v["nodes"]["active"]) == (0, 0, 1)


def test_finished_run_without_an_end_time_ends_at_its_last_version(tmp_path: Path) -> None:
    v = run_view(_store(done=True, done_at=None), AFTER)
    assert v["run_state"] == "finished" and v["ended_at"] == END - 5  # the last version came from that upload


def test_page_shows_a_finished_run_as_finished(tmp_path: Path) -> None:
    """app.js renders the finished view: badge, end time, chips, node states and last-seen texts."""
    from playwright.sync_api import sync_playwright
    from test_browser import _browser, _wait

    view = run_view(_store(done=True), AFTER)
    site = tmp_path / "site"
    (site / "static").mkdir(parents=True)
    (site / "v1").mkdir()
    for name in ("app.js", "style.css"):
        (site / "static" / name).write_bytes((STATIC_DIR / name).read_bytes())
    (site / "index.html").write_bytes((STATIC_DIR / "index.html").read_bytes())
    (site / "v1" / "dashboard").write_text(json.dumps(view))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = _browser(p)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"http://127.0.0.1:{srv.server_port}/?interval=500")
                _wait(lambda: page.text_content("#status") == "finished", "the finished badge")
                assert "(23 min ago)" in (page.text_content("#ended") or "")
                assert page.text_content("#nodes-finished") == "1 finished"
                assert page.text_content("#nodes-gone") == "2 gone"
                assert page.query_selector("#nodes-active") is None  # no "N active" for a finished run
                cells = {r.get_attribute("data-node"): [c.inner_text() for c in r.query_selector_all("td")]
                         for r in page.query_selector_all("#contributors tbody tr[data-node]")}
                assert cells["stayed"][1] == "finished" and cells["stayed"][-1] == "idle since run end"
                assert cells["left"][1] == "gone" and cells["left"][-1] == "last seen 36 min ago, 13 min before the end"
                assert not errors, errors
            finally:
                browser.close()
    finally:
        srv.shutdown()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass
