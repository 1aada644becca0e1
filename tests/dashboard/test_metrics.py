"""GET /metrics is valid Prometheus text with the run's counters, equal to what /v1/status reports."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def _samples(url: str, token: str | None = None) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _settled(url: str, timeout: float = 30.0) -> tuple[dict, dict]:
    """/metrics and /v1/status read while no merge lands in between (merges run off the request path)."""
    end = time.time() + timeout
    while True:
        m = _samples(url)
        st = httpx.get(url + "/v1/status").json()
        if m[("trainnet_model_version", ())] == st["model_version"] or time.time() > end:
            return m, st
        time.sleep(0.2)


def test_metrics_match_status(live):
    live.step(2)
    live.wait_version(0)
    m, st = _settled(live.url)
    assert m[("trainnet_model_version", ())] == st["model_version"] >= 1
    assert m[("trainnet_tokens_accepted_total", ())] == st["tokens"] > 0
    assert m[("trainnet_updates_accepted_total", ())] == st["updates_accepted"]
    assert m[("trainnet_tokens_target", ())] == 200_000
    assert m[("trainnet_nodes", (("state", "active"),))] >= 2
    assert m[("trainnet_bytes_received_total", ())] >= m[("trainnet_bytes_received_accepted_total", ())] > 0
    assert m[("trainnet_energy_joules_total", (("kind", "estimate"),))] > 0
    # per-node series name every node: the operator's scrape only
    assert not any(name.startswith("trainnet_node_") for name, _ in m)
    private = _samples(live.url, live.server.token)
    for c in live.clients:
        assert private[("trainnet_node_tokens_total", (("node", c.node_id),))] > 0
    # Counters only grow: another round of uploads moves them.
    live.step(2)
    live.wait_version(int(m[("trainnet_model_version", ())]))
    m2 = _samples(live.url)
    assert m2[("trainnet_tokens_accepted_total", ())] > m[("trainnet_tokens_accepted_total", ())]
    assert m2[("trainnet_model_version", ())] > m[("trainnet_model_version", ())]
