"""HTTP endpoint on the node's event loop: /healthz, /readyz, /metrics.

Metrics are produced at scrape time from the live job table and counters (a
custom collector), so the hot path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from node.pressuremetrics import pressure_metrics
from node.stats import NodeView

_COUNTERS = (
    ("submitted", "jobs created (coalesced submits not included)"),
    ("coalesced", "submits attached to an existing job"),
    ("completed", "jobs completed"),
    ("failed", "jobs failed (WORK_FAIL, exception, retries exhausted, cancel)"),
    ("requeued", "jobs put back after their worker was lost or timed out"),
    ("rejected", "submits refused (queue full, store failure, bad unique)"),
    ("forwarded", "submits forwarded to the owner node"),
    ("rerouted", "forwarded submits sent again (or run here) because their owner was lost"),
    ("pushed", "jobs pushed to a sleeping worker on another node"),
    ("handed_off", "queued jobs handed to their new owner while draining"),
    ("connections_accepted", "connections accepted"),
    ("connections_refused", "connections refused by --max-connections"),
    ("protocol_errors", "malformed requests and overflowing connections"),
    ("lease_losses", "times etcd dropped this live node's registration (lease lost)"),
    ("peer_batches_sent", "peer-link batches sent"),
    ("peer_frames_sent", "peer-link frames sent"),
    ("store_commits", "store transactions committed"),
    ("store_commit_jobs", "jobs written by store transactions"),
)


class NodeCollector:
    def __init__(self, node: NodeView) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        queued = GaugeMetricFamily("gearmesh_jobs_queued", "jobs waiting for a worker",
                                   labels=["function"])
        running = GaugeMetricFamily("gearmesh_jobs_running", "jobs a worker holds",
                                    labels=["function"])
        workers = GaugeMetricFamily("gearmesh_workers", "worker registrations",
                                    labels=["function"])
        for st in node.function_stats():
            name = st.name.decode("utf-8", "replace")
            queued.add_metric([name], st.queued)
            running.add_metric([name], st.running)
            workers.add_metric([name], st.workers)
        yield queued
        yield running
        yield workers
        c = node.counters
        for attr, doc in _COUNTERS:
            yield CounterMetricFamily(f"gearmesh_{attr}", doc, value=getattr(c, attr))
        yield CounterMetricFamily("gearmesh_store_commit_seconds",
                                  "time spent in store transactions", value=c.store_commit_seconds)
        yield GaugeMetricFamily("gearmesh_connections", "open connections",
                                value=node.connection_count())
        yield GaugeMetricFamily("gearmesh_ring_epoch", "partition map epoch (0 standalone)",
                                value=node.cluster_epoch())
        ready, _ = node.readiness()
        yield GaugeMetricFamily("gearmesh_ready", "1 when the node takes traffic",
                                value=1 if ready else 0)
        yield from pressure_metrics(node)


def make_app(node: NodeView) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))

    async def healthz(request: web.Request) -> web.Response:
        # Answering at all proves the event loop is alive.
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        ready, why = node.readiness()
        return web.Response(status=200 if ready else 503, text=why + "\n")

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_http(node: NodeView, host: str, port: int) -> Any:
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


async def stop_http(runner: Any) -> None:
    await runner.cleanup()
