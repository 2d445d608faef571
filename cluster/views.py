"""The cluster side of the node's HTTP API (node.api.ClusterViews).

How a node learns the other nodes' views: it asks each member's own
``/api/node`` over HTTP, at the ``http_address`` the member published in
etcd. Chosen over a peer-link frame because it needs no new frame kind, no
change to the hot dispatch path and no state kept for it; a node whose HTTP
does not answer is simply shown as unreachable, and each answer is exactly
what that node's own page shows. Requests run concurrently with a short
timeout, so one hung node costs the page at most that long.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from cluster.membership import Membership
from cluster.peerlink import PeerLinks
from node.api import Member
from node.handles import node_of

ASK_TIMEOUT = 1.5  # seconds for one peer's answer
GONE_KEPT = 900.0  # a node that left stays listed as "gone" this long (the chart's span)


class ClusterViews:
    def __init__(self, node_id: str, membership: Callable[[], Membership | None],
                 links: PeerLinks) -> None:
        self.node_id = node_id
        self._membership = membership  # created when the cluster starts
        self.links = links
        self._seen: dict[str, tuple[Member, float]] = {}  # every member seen, and when

    def local(self) -> dict[str, Any]:
        ms = self._membership()
        m = ms.current if ms is not None else None
        links = {peer: (st.value if (st := self.links.state(peer)) is not None else "down")
                 for peer in sorted(self.links.peers())}
        info = ms.info if ms is not None else None
        return {
            "state": info.state if info is not None else "joining",
            "epoch": m.epoch if m is not None else 0,
            "partitions": len(m.partitions_of(self.node_id))
            if m is not None and self.node_id in m.active else 0,
            "links": links,
            "address": info.gearman_address if info is not None else "",
            "http": info.http_address if info is not None else "",
        }

    def members(self) -> list[Member]:
        ms = self._membership()
        m = ms.current if ms is not None else None
        now = time.monotonic()
        present: set[str] = set()
        if m is not None:
            for node_id, info in m.members.items():
                if node_id == self.node_id:
                    continue
                present.add(node_id)
                self._seen[node_id] = (Member(node_id, info.state, info.gearman_address,
                                              info.http_address), now)
        out = []
        for node_id, (member, at) in list(self._seen.items()):
            if node_id in present:
                out.append(member)
            elif now - at > GONE_KEPT:
                del self._seen[node_id]
            else:
                out.append(Member(node_id, "gone", member.address, member.http))
        return sorted(out, key=lambda x: x.node_id)

    def owner_of_handle(self, handle: bytes) -> str | None:
        # The router reads handles by the same rule to route GET_STATUS.
        node_id = node_of(handle)
        if node_id is None or node_id == self.node_id:
            return None
        known = {x.node_id for x in self.members() if x.state != "gone"}
        return node_id if node_id in known else None

    async def ask(self, node_id: str, method: str, path: str,
                  body: Mapping[str, Any] | None = None,
                  headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        member = next((x for x in self.members() if x.node_id == node_id), None)
        if member is None or not member.http:
            return 0, {"error": f"node {node_id} has no HTTP address"}
        url = f"http://{member.http}{path}"
        timeout = aiohttp.ClientTimeout(total=ASK_TIMEOUT)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
                    method, url, json=body, headers=dict(headers or {})) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = {"error": f"HTTP {resp.status}: not JSON"}
                return resp.status, data
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return 0, {"error": f"{type(e).__name__}: {e}" if str(e) else type(e).__name__}
