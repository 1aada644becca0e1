"""Prometheus metrics of a coordinator, computed at scrape time from the same view as the dashboard.

    registry = make_registry(lambda: run_view(db, time.time(), live_snapshot(svc)))
    text = render(registry)          # Prometheus text exposition format, for GET /metrics

A private `CollectorRegistry` per app (no process-global state), so several coordinators or tests in one
process do not collide. Counters are `_total`; per-node series are labelled with `node` and only made with
`per_node=True` (the coordinator serves them to the operator only: they name every node).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RunCollector:
    """A prometheus_client custom collector over `view_fn()` (a dashboard view dict)."""

    def __init__(self, view_fn: Callable[[], dict[str, Any]], per_node: bool = True) -> None:
        self.view_fn, self.per_node = view_fn, per_node

    def describe(self) -> list[Metric]:
        return []  # metrics are only known at scrape time

    def collect(self) -> Iterator[Metric]:
        v = self.view_fn()
        u = v["updates"]

        def gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))

        def counter(name: str, doc: str, value: float) -> Metric:
            return CounterMetricFamily(name, doc, value=float(value))

        yield from gauge("trainnet_model_version", "Current global model version", v["model_version"])
        yield counter("trainnet_tokens_accepted", "Tokens in accepted updates", v["tokens"])
        yield from gauge("trainnet_tokens_target", "Token budget of the run", v["tokens_target"])
        yield from gauge("trainnet_run_done", "1 once the token budget is reached", int(v["done"]))
        yield counter("trainnet_updates_accepted", "Updates accepted", u["updates_accepted"])
        yield counter("trainnet_updates_merged", "Updates merged into a model version", u["updates_merged"])
        yield counter("trainnet_outer_steps", "Outer optimizer steps", u["outer_steps"])
        yield counter("trainnet_leases_expired", "Leases that expired (shard requeued)", u["leases_expired"])
        yield from gauge("trainnet_leases_active", "Leases held right now", u["leases_active"])
        yield from gauge("trainnet_buffered_updates", "Accepted updates waiting for a merge", u["buffered"])
        rej = CounterMetricFamily("trainnet_updates_rejected", "Updates rejected, by reason", labels=["reason"])
        for reason, n in sorted(u["reject_reasons"].items()):
            rej.add_metric([reason], float(n))
        yield rej
        yield from gauge("trainnet_val_loss", "Held-out loss of the latest evaluated version (nats/token)",
                         v["val_loss"])
        yield from gauge("trainnet_throughput_tokens_per_second", "Accepted tokens per second (last minute)",
                         v["throughput"]["tokens_per_s"])
        b = v["bytes"]
        yield counter("trainnet_bytes_received", "Upload bytes received (accepted and refused)", b["in_total"])
        yield counter("trainnet_bytes_received_accepted", "Upload bytes of accepted updates", b["in_accepted"])
        sent = CounterMetricFamily("trainnet_bytes_sent", "Bytes served, by kind", labels=["kind"])
        for kind, n in sorted(b["by_kind"].items()):
            if kind != "update_in":
                sent.add_metric([kind], float(n))
        yield sent
        nodes = GaugeMetricFamily("trainnet_nodes", "Registered nodes by state", labels=["state"])
        for state in ("active", "lagging", "dropped"):
            nodes.add_metric([state], float(v["nodes"][state]))
        yield nodes
        yield from gauge("trainnet_nodes_banned", "Banned nodes", v["nodes"]["banned"])
        audits = CounterMetricFamily("trainnet_audits", "Verification audits, by result", labels=["result"])
        audits.add_metric(["passed"], float(v["audits"]["passed"]))
        audits.add_metric(["failed"], float(v["audits"]["failed"]))
        yield audits
        e = v["energy"]
        energy = CounterMetricFamily("trainnet_energy_joules", "Energy reported with accepted updates",
                                     labels=["kind"])
        energy.add_metric(["measured"], float(e["measured_joules"]))
        energy.add_metric(["estimate"], float(e["estimated_joules"]))
        yield energy
        if not self.per_node:  # public scrape: aggregates only, label sets bounded whatever the swarm size
            return
        ntok = CounterMetricFamily("trainnet_node_tokens", "Accepted tokens per node", labels=["node"])
        nacc = CounterMetricFamily("trainnet_node_updates_accepted", "Accepted updates per node", labels=["node"])
        nrej = CounterMetricFamily("trainnet_node_updates_rejected", "Rejected updates per node", labels=["node"])
        nen = CounterMetricFamily("trainnet_node_energy_joules", "Energy per node (see energy_measured)",
                                  labels=["node", "measured"])
        for r in v["contributors"]:
            ntok.add_metric([r["node_id"]], float(r["tokens"]))
            nacc.add_metric([r["node_id"]], float(r["accepted"]))
            nrej.add_metric([r["node_id"]], float(r["rejected"]))
            if r["energy_j"] is not None:
                nen.add_metric([r["node_id"], str(r["energy_measured"]).lower()], float(r["energy_j"]))
        yield from (ntok, nacc, nrej, nen)


def make_registry(view_fn: Callable[[], dict[str, Any]], per_node: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(view_fn, per_node))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
