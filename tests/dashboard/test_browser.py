"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) against a live coordinator."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def _browser(p):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with .ci/system-deps (apt-get install chromium)")
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def _wait(cond, what: str, timeout: float = 15.0) -> None:
    # Polled from Python: page.wait_for_function would evaluate a string in the page, which the
    # dashboard's Content-Security-Policy (script-src 'self', no eval) rightly forbids.
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.1)


def _version(page) -> int:
    m = re.fullmatch(r"v(\d+)", page.text_content("#model-version") or "")
    return int(m.group(1)) if m else -1


def test_dashboard_shows_live_values(live, tmp_path):
    from playwright.sync_api import sync_playwright

    live.step(2)  # at least one version and two contributors before the page loads
    live.wait_version(0)  # (merges run off the request path)
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(live.url + f"/?interval=500&token={live.server.token}")
            _wait(lambda: _version(page) >= 0, "a model version on the page")
            before = _version(page)
            assert before >= 1
            page.wait_for_selector("#contributors tbody tr[data-node]")
            # New uploads while the page stays open: the version shown must increase without a reload.
            live.step(4)
            # (polled every 500 ms: on a loaded machine the page may first show an intermediate version)
            _wait(lambda: _version(page) >= before + 2, "the version to increase by two without a reload")
            after = _version(page)
            assert after >= before + 2, (before, after)
            # Wait until the page shows what the coordinator reports now (the held-out loss is evaluated in
            # the background, a tick later).
            view = live.dashboard()
            _wait(lambda: (page.text_content("#tokens") or "").replace(",", "") == str(view["tokens"]),
                  "the page to show the current token count")
            # (the evaluation runs in the background every 2 s; a loaded CI machine may need longer)
            try:
                _wait(lambda: len(page.query_selector_all("#chart-loss circle")) >= 2, "two points on the loss chart",
                      timeout=60.0)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; coordinator val curve: {live.dashboard().get('val_curve')}") from None
            rows = page.query_selector_all("#contributors tbody tr[data-node]")
            shown = {r.get_attribute("data-node") for r in rows}
            assert {c.node_id for c in live.clients} <= shown
            first = rows[0].inner_text()
            assert "estimate" in first and "J" in first  # per-node energy, labelled as an estimate
            assert page.text_content("#status") == "running"
            assert int(page.text_content("#nodes-active").split()[0]) >= 2
            assert page.text_content("#val-loss") not in ("", "–")
            assert page.query_selector("#chart-tokens path.series") is not None
            assert page.query_selector_all("#events li"), "no events listed"
            assert not errors, errors
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("TRAINNET_TEST_ARTIFACTS"):
        dest = Path(os.environ["TRAINNET_TEST_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / "dashboard.png")


def test_static_files_are_local_and_whitelisted(live):
    import httpx

    r = httpx.get(live.url + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "http://" not in r.text and "https://" not in r.text  # no CDN, no external fonts
    for name in ("app.js", "style.css"):
        body = httpx.get(f"{live.url}/static/{name}").text
        assert "http://" not in body.replace("http://www.w3.org/2000/svg", "") and "https://" not in body
    for bad in ("../service.py", "%2e%2e%2fdata.py", "data.py", "index.htm"):
        assert httpx.get(f"{live.url}/static/{bad}").status_code == 404
