"""The JSON views of the HTTP API, built from the node's public methods.

Two levels, one shape:

* ``/api/node`` — this node alone (what it owns, its workers, its rates);
* ``/api/status`` — the whole cluster: this node's view plus every other
  member's ``/api/node``, merged by :func:`merge`. The other nodes come from a
  :class:`ClusterViews` object that the composition root injects (node/ never
  imports cluster/); a standalone node has none and its status is its own.

Per-node numbers keep gearmand's per-server meaning (those of ``gearadmin
--status`` on that node: the jobs it owns, the workers connected to it);
cluster-wide numbers are their sums, the same as ``gearmesh status``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

from node.rates import RateHistory, Series, add_series
from node.stats import Counters, FunctionStat, JobSnapshot, NodeView, WorkerSnapshot

PRIORITIES = ("high", "normal", "low")
MAX_JOBS = 1000  # per node and request: a page of jobs, not a dump of the queue


@dataclass(frozen=True, slots=True)
class Member:
    """Another node as the membership knows it."""

    node_id: str
    state: str  # joining / active / draining / gone
    address: str  # Gearman host:port
    http: str  # HTTP host:port ("" when its HTTP is off)


class ClusterViews(Protocol):
    """What the HTTP API needs from the cluster layer."""

    def local(self) -> dict[str, Any]:
        """This node's cluster facts: state, epoch, partitions, links
        (peer id → "up" / "connecting" / "down")."""
        ...

    def members(self) -> list[Member]:
        """The other nodes, gone ones included for a while."""
        ...

    def owner_of_handle(self, handle: bytes) -> str | None:
        """The other node a job handle names, or None."""
        ...

    async def ask(self, node_id: str, method: str, path: str,
                  body: Mapping[str, Any] | None = None,
                  headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """Call another node's HTTP API: (status, JSON); status 0 when it did
        not answer (the JSON is then {"error": why})."""
        ...


class APINode(NodeView, Protocol):
    """The public surface of node.server.Node the API reads."""

    started_at: float
    cluster_views: ClusterViews | None

    @property
    def node_id(self) -> str: ...

    @property
    def draining(self) -> bool: ...

    @property
    def queue_kind(self) -> str: ...

    def http_action_allowed(self, action: str) -> tuple[bool, str]:
        """(allowed, why not) for an action asked over HTTP (`cancel job`)."""
        ...


def version() -> str:
    try:
        return metadata.version("gearmesh")
    except metadata.PackageNotFoundError:
        return "0"


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def function_row(st: FunctionStat) -> dict[str, Any]:
    return {"name": _text(st.name.split(b"\0", 1)[0]), "queued": st.queued,
            "running": st.running, "workers": st.workers}


def worker_row(node_id: str, w: WorkerSnapshot) -> dict[str, Any]:
    state = "busy" if w.running else ("sleeping" if w.asleep else "awake")
    return {"node": node_id, "fd": w.fd, "peer": w.peer, "client_id": _text(w.client_id),
            "functions": [_text(f) for f in w.functions], "running": w.running,
            "state": state}


def job_row(node_id: str, j: JobSnapshot, now: float) -> dict[str, Any]:
    return {"handle": _text(j.handle), "unique": _text(j.unique),
            "priority": PRIORITIES[j.priority], "state": j.state,
            "age": round(max(0.0, now - j.created), 1), "size": j.size,
            "background": j.background, "when": j.when, "owner": node_id}


class Sampler:
    """Once a second: the rate history and the recent store commit latency."""

    def __init__(self, counters: Counters, seconds: int = 900) -> None:
        self.counters = counters
        self.history = RateHistory(seconds)
        self._commits = (counters.store_commits, counters.store_commit_seconds)
        self.commit_ms: float | None = None  # mean of the commits of the last sample with any

    def sample(self, now: float) -> None:
        c = self.counters
        self.history.sample(now, c.submitted, c.completed)
        n0, s0 = self._commits
        if c.store_commits > n0:
            self.commit_ms = (c.store_commit_seconds - s0) / (c.store_commits - n0) * 1000
        self._commits = (c.store_commits, c.store_commit_seconds)


def node_view(node: APINode, sampler: Sampler, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    ready, why = node.readiness()
    functions = sorted((function_row(st) for st in node.function_stats()),
                       key=lambda f: f["name"])
    workers = [worker_row(node.node_id, w) for w in node.worker_snapshots()]
    sub, done = sampler.history.rate(now)
    c = node.counters
    info: dict[str, Any] = {
        "id": node.node_id, "version": version(),
        "state": "draining" if node.draining else "active",
        "ready": ready, "why": why, "epoch": node.cluster_epoch(), "partitions": None,
        "links": {}, "connections": node.connection_count(), "workers": len(workers),
        "uptime": round(now - node.started_at, 1),
        "rates": {"submitted": sub, "completed": done},
        "totals": {"submitted": c.submitted, "completed": c.completed, "failed": c.failed},
        "store": {"queue": node.queue_kind, "commits": c.store_commits,
                  "commit_ms": None if sampler.commit_ms is None
                  else round(sampler.commit_ms, 3)},
        "reachable": True, "error": "",
    }
    views = node.cluster_views
    if views is not None:
        info.update(views.local())
    return {"node": info, "functions": functions, "workers": workers,
            "history": sampler.history.series(now - 1).to_json()}


def jobs_view(node: APINode, function: str, limit: int,
              now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    total, jobs = node.queued_jobs(function.encode(), max(0, min(limit, MAX_JOBS)))
    return {"function": function, "total": total,
            "nodes": {node.node_id: total},
            "jobs": [job_row(node.node_id, j, now) for j in jobs]}


def merge_jobs(function: str, parts: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """Several nodes' jobs_view of one function as one list, oldest first
    within a priority (the order a worker would get them, roughly: each node
    dispatches its own queue)."""
    jobs = [j for p in parts for j in p.get("jobs", [])]
    jobs.sort(key=lambda j: (PRIORITIES.index(j["priority"]), j["state"] != "queued",
                             -j["age"]))
    nodes: dict[str, int] = {}
    for p in parts:
        nodes.update(p.get("nodes", {}))
    return {"function": function, "total": sum(nodes.values()), "nodes": nodes,
            "jobs": jobs[:limit], "errors": {k: v for p in parts
                                             for k, v in p.get("errors", {}).items()}}


def down_view(m: Member, error: str) -> dict[str, Any]:
    """A member that did not answer: it is listed, with nothing counted."""
    return {"node": {"id": m.node_id, "state": m.state, "reachable": False, "error": error,
                     "address": m.address, "http": m.http, "epoch": None, "partitions": None,
                     "links": {}, "connections": 0, "workers": 0, "ready": False,
                     "why": error, "rates": {"submitted": 0.0, "completed": 0.0},
                     "store": {}},
            "functions": [], "workers": []}


def merge(views: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-node views → the cluster view (/api/status, `gearmesh status`)."""
    funcs: dict[str, dict[str, Any]] = {}
    for v in views:
        nid = v["node"]["id"]
        for f in v.get("functions", []):
            acc = funcs.setdefault(f["name"], {"name": f["name"], "queued": 0, "running": 0,
                                               "workers": 0, "nodes": {}})
            for k in ("queued", "running", "workers"):
                acc[k] += f[k]
            acc["nodes"][nid] = {k: f[k] for k in ("queued", "running", "workers")}
    for acc in funcs.values():
        # Jobs wait and nothing anywhere in the cluster can run them.
        acc["stuck"] = acc["queued"] > 0 and acc["workers"] == 0
    series = [Series(h["end"], h["submitted"], h["completed"])
              for v in views if (h := v.get("history"))]
    total = add_series(series)
    nodes = sorted((v["node"] for v in views), key=lambda n: n["id"])
    return {
        "generated_at": round(time.time(), 3),
        "functions": sorted(funcs.values(), key=lambda f: f["name"]),
        "nodes": nodes,
        "workers": [w for v in views for w in v.get("workers", [])],
        "totals": {k: sum(f[k] for f in funcs.values())
                   for k in ("queued", "running", "workers")},
        "rates": {k: round(sum(n["rates"][k] for n in nodes if n.get("rates")), 2)
                  for k in ("submitted", "completed")},
        "history": total.to_json() if total is not None else None,
    }
