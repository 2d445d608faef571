"""`gearmesh status`: one view of the whole cluster from anywhere.

Where the numbers come from, by what the operator gives:

* ``--etcd``: the members registered there; each is asked for its own JSON
  view (``/api/node`` on its HTTP address), and the views are merged the way
  a node's ``/api/status`` merges them (node.api.merge), so this command and
  the dashboard always agree;
* ``--api URL``: one node's ``/api/status`` (the cluster as that node sees it);
* ``--servers host:port,...``: any Gearman servers, gearmand included, over
  the admin protocol (``status``, ``workers``) — per-server numbers summed.

Per-node numbers keep gearmand's per-server meaning: a node's ``status``
counts the jobs it owns and the workers connected to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp

from node.api import Member, down_view, merge

TIMEOUT = 3.0


async def _admin(address: str, command: bytes, timeout: float = TIMEOUT) -> bytes:
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


async def admin_view(address: str) -> dict[str, Any]:
    """A server's view from the admin protocol alone (works against gearmand)."""
    member = Member(address, "-", address, "")
    try:
        status = await _admin(address, b"status")
        workers = await _admin(address, b"workers")
    except (OSError, TimeoutError, ValueError) as e:
        return down_view(member, str(e) or type(e).__name__)
    functions = []
    for line in status.decode("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            total, running, nworkers = (int(p) for p in parts[1:])
            functions.append({"name": parts[0], "queued": total - running, "running": running,
                              "workers": nworkers})
    lines = [x for x in workers.decode("utf-8", "replace").splitlines() if x and x != "."]
    worker_rows = []
    for line in lines:
        head, _, funcs = line.partition(" :")
        fields = head.split(" ")
        if funcs.strip() and len(fields) >= 3:
            worker_rows.append({"node": address, "fd": int(fields[0]) if fields[0].isdigit()
                                else -1, "peer": fields[1], "client_id": " ".join(fields[2:]),
                                "functions": funcs.split(), "running": 0, "state": "-"})
    view = down_view(member, "")
    view["node"].update(reachable=True, ready=True, why="", epoch=None,
                        connections=max(0, len(lines) - 1),  # the asking one is listed too
                        workers=len(worker_rows))
    view["functions"] = functions
    view["workers"] = worker_rows
    return view


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    try:
        async with session.get(url) as resp:
            return resp.status, await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
        return 0, {"error": str(e) or type(e).__name__}


async def http_view(session: aiohttp.ClientSession, m: Member) -> dict[str, Any]:
    if not m.http:
        return await admin_view(m.address) if m.address else down_view(m, "no address")
    status, body = await _get(session, f"http://{m.http}/api/node")
    if status != 200 or not isinstance(body, dict) or "node" not in body:
        why = body.get("error") if isinstance(body, dict) else None
        return down_view(m, str(why or f"HTTP {status}"))
    body["node"].setdefault("address", m.address)
    return body


async def members(etcd: str, prefix: str) -> list[Member]:
    import aetcd

    from cluster.etcdkeys import node_id_of, nodes_prefix
    from cluster.memberinfo import MemberInfo
    from cluster.membership import parse_endpoints

    host, port = parse_endpoints(etcd)[0]
    client = aetcd.Client(host, port, timeout=5)
    try:
        nodes = nodes_prefix(prefix)
        out = []
        for kv in await client.get_prefix(nodes):
            node_id = node_id_of(kv.key, nodes)
            try:
                info = MemberInfo.decode(kv.value)
            except ValueError:
                continue
            out.append(Member(node_id, info.state, info.gearman_address, info.http_address))
        return sorted(out, key=lambda r: r.node_id)
    finally:
        await client.close()


async def collect(etcd: str | None, prefix: str, servers: str | None,
                  api: str | None = None) -> dict[str, Any]:
    """The cluster view, in /api/status's shape."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if api:
            url = api.rstrip("/")
            url = url if url.startswith("http") else f"http://{url}"
            status, body = await _get(session, url + "/api/status")
            if status != 200 or not isinstance(body, dict):
                raise OSError(f"{url}/api/status answered {status}: "
                              f"{body.get('error') if isinstance(body, dict) else body}")
            return body
        if servers:
            views = await asyncio.gather(*(admin_view(a.strip()) for a in servers.split(",")
                                           if a.strip()))
        elif etcd:
            views = await asyncio.gather(*(http_view(session, m)
                                           for m in await members(etcd, prefix)))
        else:
            views = [await admin_view("127.0.0.1:4730")]
    return merge(list(views))


def render(view: dict[str, Any]) -> str:
    out = ["FUNCTION                 QUEUED  RUNNING  WORKERS"]
    for f in view["functions"]:
        mark = "  <- no worker" if f.get("stuck") else ""
        out.append(f"{f['name'][:24]:<24} {f['queued']:>6} {f['running']:>8} "
                   f"{f['workers']:>8}{mark}")
    out.append("")
    out.append("NODE         STATE      EPOCH    WORKERS  CONNS  ADDRESS")
    for n in view["nodes"]:
        epoch = "-" if n.get("epoch") is None else str(n["epoch"])
        state = n["state"] if n["reachable"] else f"DOWN ({n['error']})"
        out.append(f"{n['id'][:12]:<12} {state:<10} {epoch:>6} {n['workers']:>9} "
                   f"{n['connections']:>6}  {n.get('address', '')}")
    return "\n".join(out)


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    import os
    p.add_argument("--etcd", default=os.environ.get("GEARMESH_ETCD"),
                   help="etcd endpoints (or GEARMESH_ETCD): ask every member's HTTP API")
    p.add_argument("--etcd-prefix", default=os.environ.get("GEARMESH_ETCD_PREFIX", "/gearmesh"))
    p.add_argument("--servers", default=None,
                   help="host:port list of Gearman servers to ask over the admin protocol")
    p.add_argument("--api", default=None,
                   help="one node's HTTP address (host:port): its /api/status")


def run_status(ns: argparse.Namespace) -> int:
    try:
        view = asyncio.run(collect(ns.etcd, ns.etcd_prefix, ns.servers, ns.api))
    except (OSError, ValueError) as e:
        print(f"gearmesh status: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # etcd client errors come in many types
        print(f"gearmesh status: error: cannot read the cluster from etcd: {e}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps(view, sort_keys=True))
    else:
        print(render(view))
    return 0 if all(n["reachable"] for n in view["nodes"]) else 1
