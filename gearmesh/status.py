"""`gearmesh status`: one view of the whole cluster from anywhere.

Members come from etcd (or --servers); each node is then asked over its
Gearman port with the ordinary admin commands (`status`, `workers`), and its
HTTP /metrics for the ring epoch when it has one. Per-node admin output keeps
gearmand's per-server meaning: a node's `status` counts the jobs it owns and
the workers connected to it; this command adds them up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import urllib.request
from dataclasses import dataclass, field
from typing import Any


@dataclass
class NodeReport:
    node_id: str
    address: str
    state: str = "-"
    http: str = ""
    reachable: bool = False
    error: str = ""
    epoch: int | None = None
    functions: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    workers: int = 0
    connections: int = 0


async def _admin(address: str, command: bytes, timeout: float = 3.0) -> bytes:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    try:
        writer.write(command + b"\r\n")
        await writer.drain()
        data = b""
        while not (data == b".\n" or data.endswith(b"\n.\n")):
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        writer.close()


def _epoch_from_metrics(http: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://{http}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    m = re.search(r"^gearmesh_ring_epoch (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else None


async def _probe(rep: NodeReport) -> None:
    try:
        status = await _admin(rep.address, b"status")
        workers = await _admin(rep.address, b"workers")
    except (OSError, TimeoutError, ValueError) as e:
        rep.error = str(e) or type(e).__name__
        return
    rep.reachable = True
    for line in status.decode("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            total, running, nworkers = (int(p) for p in parts[1:])
            rep.functions[parts[0]] = (total - running, running, nworkers)
    lines = [x for x in workers.decode("utf-8", "replace").splitlines() if x and x != "."]
    rep.connections = max(0, len(lines) - 1)  # the asking connection is listed too
    rep.workers = sum(1 for x in lines if x.split(":", 1)[-1].strip())
    if rep.http:
        rep.epoch = await asyncio.get_running_loop().run_in_executor(
            None, _epoch_from_metrics, rep.http)


async def _members(etcd: str, prefix: str) -> list[NodeReport]:
    import aetcd

    from cluster.memberinfo import MemberInfo
    from cluster.membership import parse_endpoints

    host, port = parse_endpoints(etcd)[0]
    client = aetcd.Client(host, port, timeout=5)
    try:
        nodes_prefix = (prefix.rstrip("/") + "/nodes/").encode()
        out = []
        for kv in await client.get_prefix(nodes_prefix):
            node_id = kv.key[len(nodes_prefix):].decode()
            try:
                info = MemberInfo.decode(kv.value)
            except ValueError:
                continue
            out.append(NodeReport(node_id, info.gearman_address, info.state, info.http_address))
        return sorted(out, key=lambda r: r.node_id)
    finally:
        await client.close()


async def collect(etcd: str | None, prefix: str, servers: str | None) -> list[NodeReport]:
    if servers:
        reports = [NodeReport(a.strip(), a.strip()) for a in servers.split(",") if a.strip()]
    elif etcd:
        reports = await _members(etcd, prefix)
    else:
        reports = [NodeReport("127.0.0.1:4730", "127.0.0.1:4730")]
    await asyncio.gather(*(_probe(r) for r in reports))
    return reports


def summarize(reports: list[NodeReport]) -> dict[str, Any]:
    funcs: dict[str, list[int]] = {}
    for r in reports:
        for name, (queued, running, workers) in r.functions.items():
            acc = funcs.setdefault(name, [0, 0, 0])
            acc[0] += queued
            acc[1] += running
            acc[2] += workers
    return {
        "functions": {n: {"queued": q, "running": ru, "workers": w}
                      for n, (q, ru, w) in sorted(funcs.items())},
        "nodes": [{"id": r.node_id, "address": r.address, "state": r.state,
                   "reachable": r.reachable, "epoch": r.epoch, "workers": r.workers,
                   "connections": r.connections, "error": r.error} for r in reports],
    }


def render(summary: dict[str, Any]) -> str:
    out = ["FUNCTION             QUEUED  RUNNING  WORKERS"]
    for name, f in summary["functions"].items():
        out.append(f"{name[:20]:<20} {f['queued']:>6} {f['running']:>8} {f['workers']:>8}")
    out.append("")
    out.append("NODE         STATE      EPOCH    WORKERS  CONNS  ADDRESS")
    for n in summary["nodes"]:
        epoch = "-" if n["epoch"] is None else str(n["epoch"])
        state = n["state"] if n["reachable"] else f"DOWN ({n['error']})"
        out.append(f"{n['id'][:12]:<12} {state:<10} {epoch:>6} {n['workers']:>9} "
                   f"{n['connections']:>6}  {n['address']}")
    return "\n".join(out)


def run_status(ns: argparse.Namespace) -> int:
    try:
        reports = asyncio.run(collect(ns.etcd, ns.etcd_prefix, ns.servers))
    except (OSError, ValueError) as e:
        print(f"gearmesh status: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # etcd client errors come in many types
        print(f"gearmesh status: error: cannot read the cluster from etcd: {e}", file=sys.stderr)
        return 2
    summary = summarize(reports)
    if ns.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(render(summary))
    return 0 if all(r.reachable for r in reports) else 1
