"""HTTP endpoint on the node's event loop: /healthz, /readyz, /metrics, the
JSON API under /api/ (node/api.py builds its views) and the dashboard at /.

Metrics are produced at scrape time from the live job table and counters (a
custom collector), so the hot path pays nothing for them; the same goes for
the API, whose only background work is a once-a-second sample of two
counters for the rate chart.

The port is read-only but for one action, cancelling a queued job, which is
a JSON POST with a CSRF token and can be switched off (--http-actions off).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from node import api
from node.admin import VERSION
from node.pressuremetrics import pressure_metrics
from node.stats import NodeView

DASHBOARD = Path(__file__).resolve().parent / "dashboard"
_STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
CSRF_HEADER = "X-CSRF-Token"
PEER_CACHE_SECONDS = 0.5  # several open dashboards share one round of peer requests

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
    ("noops_sent", "NOOPs sent to wake sleeping workers"),
    ("handed_off", "queued jobs handed to their new owner while draining"),
    ("connections_accepted", "connections accepted"),
    ("connections_refused", "connections refused by --max-connections"),
    ("protocol_errors", "malformed requests and overflowing connections"),
    ("lease_losses", "times etcd dropped this live node's registration (lease lost)"),
    ("peer_batches_sent", "peer-link batches sent"),
    ("peer_frames_sent", "peer-link frames sent"),
    ("store_commits", "store transactions committed"),
    ("store_commit_jobs", "jobs written by store transactions"),
    ("replica_copies_sent", "background job copies sent to a replica node"),
    ("replica_frames_sent", "peer-link frames that carried job copies or their deletions"),
    ("promoted", "copies of a lost node's jobs promoted to jobs of this node"),
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
        yield GaugeMetricFamily("gearmesh_under_replicated_jobs",
                                "background jobs here with fewer than two copies",
                                value=c.under_replicated)
        yield GaugeMetricFamily("gearmesh_ring_epoch", "partition map epoch (0 standalone)",
                                value=node.cluster_epoch())
        ready, _ = node.readiness()
        yield GaugeMetricFamily("gearmesh_ready", "1 when the node takes traffic",
                                value=1 if ready else 0)
        yield from exporter_metrics(node)
        yield from pressure_metrics(node)


def exporter_metrics(node: NodeView) -> Iterator[Metric]:
    """The community gearman-exporter's names and meanings (its numbers are
    those of the admin `status` lines), so existing dashboards and alerts
    work unchanged against a gearmesh node."""
    yield GaugeMetricFamily("gearman_up", "1 when the Gearman server answers", value=1)
    info = GaugeMetricFamily("gearman_version_info", "Gearman server version",
                             labels=["version"])
    info.add_metric([VERSION.decode()], 1)  # what admin `version` says, as the exporter reads it
    yield info
    total = GaugeMetricFamily("gearman_status_total", "jobs queued or running",
                              labels=["function"])
    running = GaugeMetricFamily("gearman_status_running", "jobs running", labels=["function"])
    workers = GaugeMetricFamily("gearman_status_workers", "workers able to run the function",
                                labels=["function"])
    for st in node.function_stats():
        name = st.name.split(b"\0", 1)[0].decode("utf-8", "replace")
        total.add_metric([name], st.queued + st.running)
        running.add_metric([name], st.running)
        workers.add_metric([name], st.workers)
    yield total
    yield running
    yield workers


def _limit(request: web.Request, default: int = 100) -> int:
    try:
        return max(0, min(int(request.query.get("limit", default)), api.MAX_JOBS))
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be a number\n") from None


def _csrf_refused(request: web.Request, token: str) -> str | None:
    """Why a state-changing request may not be a browser's cross-site one.

    Three locks, each enough against a plain cross-site form or fetch: the
    token (only readable by a page of this origin), a JSON body (a form
    cannot send one without a CORS preflight, which this server never
    grants) and, when the browser says where it comes from, the same origin.
    """
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return f"missing or wrong {CSRF_HEADER} header"
    if request.content_type != "application/json":
        return "the body must be application/json"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return f"cross-origin request from {origin}"
    return None


class ClusterStatus:
    """/api/status: this node's view and the other members', merged."""

    def __init__(self, node: api.APINode, sampler: api.Sampler) -> None:
        self.node = node
        self.sampler = sampler
        self._lock = asyncio.Lock()
        self._cached: tuple[float, list[dict[str, Any]]] | None = None

    async def peer_views(self) -> list[dict[str, Any]]:
        views = self.node.cluster_views
        if views is None:
            return []
        async with self._lock:
            cached = self._cached
            if cached is not None and time.monotonic() - cached[0] < PEER_CACHE_SECONDS:
                return cached[1]
            out = list(await asyncio.gather(*(self._one(views, m) for m in views.members())))
            self._cached = (time.monotonic(), out)
            return out

    @staticmethod
    async def _one(views: api.ClusterViews, m: api.Member) -> dict[str, Any]:
        if m.state == "gone":
            return api.down_view(m, "gone: left the cluster")
        if not m.http:
            return api.down_view(m, "its HTTP port is off")
        status, body = await views.ask(m.node_id, "GET", "/api/node")
        if status != 200 or not isinstance(body, dict) or "node" not in body:
            why = body.get("error") if isinstance(body, dict) else None
            return api.down_view(m, str(why or f"HTTP {status}"))
        node = body["node"]
        node.setdefault("address", m.address)
        node.setdefault("http", m.http)
        return body

    async def status(self) -> dict[str, Any]:
        own = api.node_view(self.node, self.sampler)
        return api.merge([own, *await self.peer_views()])

    async def jobs(self, function: str, limit: int) -> dict[str, Any]:
        parts = [api.jobs_view(self.node, function, limit)]
        views = self.node.cluster_views
        if views is not None:
            path = f"/api/node/functions/{quote(function, safe='')}/jobs?limit={limit}"

            async def one(m: api.Member) -> dict[str, Any]:
                if m.state == "gone" or not m.http:
                    return {}
                status, body = await views.ask(m.node_id, "GET", path)
                if status != 200 or not isinstance(body, dict):
                    why = body.get("error") if isinstance(body, dict) else None
                    return {"errors": {m.node_id: str(why or f"HTTP {status}")}}
                return body

            parts += await asyncio.gather(*(one(m) for m in views.members()))
        return api.merge_jobs(function, parts, limit)


def make_app(node: api.APINode) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    anode = node
    sampler = api.Sampler(node.counters)
    cluster = ClusterStatus(anode, sampler)
    token = secrets.token_urlsafe(32)

    async def healthz(request: web.Request) -> web.Response:
        # Answering at all proves the event loop is alive.
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        ready, why = node.readiness()
        return web.Response(status=200 if ready else 503, text=why + "\n")

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def page(request: web.Request) -> web.Response:
        allowed, _ = anode.http_action_allowed("cancel job")
        html = (DASHBOARD / "index.html").read_text()
        html = html.replace("{{csrf}}", token).replace("{{actions}}", "on" if allowed else "off")
        return web.Response(text=html, content_type="text/html", headers=_NO_STORE)

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=(DASHBOARD / name).read_bytes(), content_type=_STATIC[name])

    async def api_node(request: web.Request) -> web.Response:
        return _json(api.node_view(anode, sampler))

    async def api_status(request: web.Request) -> web.Response:
        return _json(await cluster.status())

    async def api_node_jobs(request: web.Request) -> web.Response:
        return _json(api.jobs_view(anode, request.match_info["name"], _limit(request)))

    async def api_jobs(request: web.Request) -> web.Response:
        return _json(await cluster.jobs(request.match_info["name"], _limit(request)))

    async def api_csrf(request: web.Request) -> web.Response:
        # Same-origin reads only (no CORS headers): other sites cannot see it.
        allowed, why = anode.http_action_allowed("cancel job")
        return _json({"token": token, "actions": allowed, "why": why})

    async def api_cancel(request: web.Request) -> web.Response:
        refused = _csrf_refused(request, token)
        if refused:
            return _json({"cancelled": False, "error": refused}, status=403)
        allowed, why = anode.http_action_allowed("cancel job")
        if not allowed:
            return _json({"cancelled": False, "error": why}, status=403)
        try:
            body = await request.json()
            handle = body["handle"]
            if not isinstance(handle, str) or not handle:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _json({"cancelled": False, "error": "body must be {\"handle\": \"H:...\"}"},
                         status=400)
        raw = handle.encode()
        if anode.cancel_job(raw):
            return _json({"cancelled": True, "handle": handle, "owner": anode.node_id})
        views = anode.cluster_views
        owner = views.owner_of_handle(raw) if views is not None else None
        if views is None or owner is None:
            return _json({"cancelled": False, "handle": handle, "error": "no such queued job"},
                         status=404)
        # The owner decides, under its own rules (its --http-actions, its ACL).
        return _json(*await _forward_cancel(views, owner, handle))

    async def sample_forever(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                sampler.sample(time.time())
                await asyncio.sleep(1.0)  # a pace, not a synchronisation
        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = web.Application()
    app.cleanup_ctx.append(sample_forever)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", page)
    app.router.add_get("/dashboard/{name}", static)
    app.router.add_get("/api/node", api_node)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/api/node/functions/{name}/jobs", api_node_jobs)
    app.router.add_get("/api/functions/{name}/jobs", api_jobs)
    app.router.add_get("/api/csrf", api_csrf)
    app.router.add_post("/api/jobs/cancel", api_cancel)
    return app


_NO_STORE = {"Cache-Control": "no-store"}


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(obj), status=status, content_type="application/json",
                        headers=_NO_STORE)


async def _forward_cancel(views: api.ClusterViews, owner: str,
                          handle: str) -> tuple[dict[str, Any], int]:
    status, body = await views.ask(owner, "GET", "/api/csrf")
    if status != 200 or not isinstance(body, dict):
        return {"cancelled": False, "handle": handle, "owner": owner,
                "error": f"owner {owner} did not answer"}, 502
    status, reply = await views.ask(owner, "POST", "/api/jobs/cancel", {"handle": handle},
                                    headers={CSRF_HEADER: str(body.get("token", ""))})
    if status == 0 or not isinstance(reply, dict):
        return {"cancelled": False, "handle": handle, "owner": owner,
                "error": f"owner {owner} did not answer"}, 502
    return reply, status


async def start_http(node: api.APINode, host: str, port: int) -> Any:
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


async def stop_http(runner: Any) -> None:
    await runner.cleanup()
