"""Several gearmesh nodes and a real etcd on loopback, for cluster system tests.

:class:`ClusterNode` is a :class:`~tests.support.servers.ServerProcess` that
runs ``gearmesh serve --etcd ...`` with its own node id, data directory and
HTTP port (the peer port is 0: the node binds an ephemeral one and publishes
it in etcd). :class:`Cluster` owns the etcd process and the nodes, reads the
membership straight from etcd (its JSON gateway, no client library), and
waits for every node to agree on the partition map.

Everything waits on observable state with a deadline — a node's ``/readyz``,
its ``/metrics`` epoch, etcd's key range — never on a fixed sleep.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cluster.etcdkeys import nodes_prefix, range_end
from cluster.memberinfo import MemberInfo
from cluster.partition import PartitionMap
from tests.support.etcd import EtcdServer
from tests.support.servers import GEARMESH, ServerProcess, free_port
from tests.support.waiting import wait_until

_EPOCH = re.compile(r"^gearmesh_ring_epoch (\S+)$", re.M)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError:
        return 0, ""


class ClusterNode(ServerProcess):
    """One ``gearmesh serve`` cluster member as a subprocess."""

    def __init__(
        self,
        node_id: str,
        etcd: str,
        workdir: Path,
        *,
        prefix: str = "/gearmesh",
        queue: str = "memory",
        lease_ttl: int = 2,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(extra_args, kind=GEARMESH, workdir=workdir, start_timeout=start_timeout)
        self.node_id = node_id
        self.etcd = etcd
        self.prefix = prefix
        self.queue = queue
        self.lease_ttl = lease_ttl
        self.http_port = 0
        self._http_for_port = -1

    def command(self, port: int) -> list[str]:
        # Called more than once per start attempt: keep the HTTP port stable
        # for one Gearman port, pick a fresh one for a retry.
        if self._http_for_port != port:
            self.http_port = free_port()
            self._http_for_port = port
        data_dir = self.workdir / "data"
        data_dir.mkdir(exist_ok=True)
        return [
            sys.executable, "-m", "gearmesh", "serve",
            "-L", "127.0.0.1", "-p", str(port),
            "--http-port", str(self.http_port), "--peer-port", "0",
            "--etcd", self.etcd, "--etcd-prefix", self.prefix,
            "--node-id", self.node_id, "--queue", self.queue,
            "--data-dir", str(data_dir), "--lease-ttl", str(self.lease_ttl),
            "--grace", "3", "-v", "INFO",
            *self.extra_args,
        ]  # fmt: skip

    # -- HTTP ------------------------------------------------------------
    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def readyz(self) -> int:
        return http_get(self.http_base + "/readyz")[0]

    def metrics(self) -> str:
        status, body = http_get(self.http_base + "/metrics")
        return body if status == 200 else ""

    def epoch(self) -> int | None:
        m = _EPOCH.search(self.metrics())
        return int(float(m.group(1))) if m else None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> ClusterNode:
        super().start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if not self.running:
                raise AssertionError(f"node {self.node_id} exited:\n{self.log_tail()}")
            return self.readyz() == 200

        try:
            wait_until(ready, timeout, what=f"node {self.node_id} /readyz 200")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlog:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<ClusterNode {self.node_id} {self.address}>"


class Cluster:
    """An etcd and the gearmesh nodes registered in it under one prefix."""

    def __init__(
        self,
        base_dir: Path,
        *,
        etcd: EtcdServer | None = None,
        prefix: str = "/gearmesh",
        queue: str = "memory",
        lease_ttl: int = 2,
    ) -> None:
        self.base_dir = base_dir
        self._own_etcd = etcd is None
        if etcd is None:
            (base_dir / "etcd").mkdir(parents=True, exist_ok=True)
            etcd = EtcdServer(data_dir=str(base_dir / "etcd"))
        self.etcd = etcd
        self.prefix = prefix.rstrip("/")
        self.queue = queue
        self.lease_ttl = lease_ttl
        self.nodes: dict[str, ClusterNode] = {}

    # -- nodes -----------------------------------------------------------
    def new_node(self, node_id: str, *extra_args: str, queue: str | None = None) -> ClusterNode:
        node = ClusterNode(
            node_id, self.etcd.endpoint, self.base_dir / node_id, prefix=self.prefix,
            queue=queue or self.queue, lease_ttl=self.lease_ttl, extra_args=extra_args,
        )  # fmt: skip
        self.nodes[node_id] = node
        return node

    def start_nodes(self, nodes: Iterable[ClusterNode]) -> None:
        """Start several nodes at once (each waits for its own readiness)."""
        todo = list(nodes)
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            for future in [pool.submit(n.start) for n in todo]:
                future.result()

    def add(self, node_id: str, *extra_args: str, queue: str | None = None) -> ClusterNode:
        node = self.new_node(node_id, *extra_args, queue=queue)
        node.start()
        return node

    def start(self, node_ids: Sequence[str], *extra_args: str) -> list[ClusterNode]:
        if self._own_etcd and not self.etcd.running:
            self.etcd.start()
        nodes = [self.new_node(n, *extra_args) for n in node_ids]
        self.start_nodes(nodes)
        self.wait_converged(node_ids)
        return nodes

    def running_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes.values() if n.running]

    def close(self) -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(self.nodes))) as pool:
            list(pool.map(lambda n: n.stop(5), self.nodes.values()))
        if self._own_etcd:
            self.etcd.close()

    # -- etcd view -------------------------------------------------------
    def members(self) -> dict[str, MemberInfo]:
        """The member records in etcd right now (node id → info)."""
        key = nodes_prefix(self.prefix)
        end = range_end(key)
        body = json.dumps({
            "key": base64.b64encode(key).decode(),
            "range_end": base64.b64encode(end).decode(),
        }).encode()  # fmt: skip
        req = urllib.request.Request(
            self.etcd.client_url + "/v3/kv/range", data=body,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=2) as resp:
            reply = json.loads(resp.read())
        out: dict[str, MemberInfo] = {}
        for kv in reply.get("kvs", []):
            node_id = base64.b64decode(kv["key"])[len(key) :].decode()
            out[node_id] = MemberInfo.decode(base64.b64decode(kv.get("value", "")))
        return out

    def member_ids(self) -> set[str]:
        try:
            return set(self.members())
        except OSError:
            return set()

    def wait_converged(
        self, node_ids: Iterable[str], *, after: int | None = None, timeout: float = 15.0
    ) -> int:
        """Wait until etcd lists exactly ``node_ids``, all active, and every one
        of those nodes reports the same map epoch (greater than ``after`` when
        given, to see a removal through). Returns that epoch."""
        want = set(node_ids)

        def check() -> int | None:
            try:
                members = self.members()
            except OSError:
                return None
            if set(members) != want or not all(m.is_active for m in members.values()):
                return None
            epochs = {self.nodes[n].epoch() for n in want}
            if len(epochs) != 1:
                return None
            (epoch,) = epochs
            if epoch is None or (after is not None and epoch <= after):
                return None
            return epoch

        return wait_until(
            check, timeout, interval=0.05, what=f"nodes {sorted(want)} to agree on one map"
        )

    @staticmethod
    def owner_of(unique: str | bytes, active: Iterable[str]) -> str:
        """The node that owns ``unique`` when ``active`` are the active members
        (the router keys on the unique id alone)."""
        key = unique.encode() if isinstance(unique, str) else unique
        pm = PartitionMap(0, {n: MemberInfo("-", state="active") for n in active})
        owner = pm.owner_of_key(key)
        assert owner is not None
        return owner

    def uniques_owned_by(
        self, owner: str, active: Iterable[str], count: int, prefix: str
    ) -> list[str]:
        """``count`` unique ids of the form ``<prefix>-<n>`` that ``owner`` owns."""
        active = list(active)
        out: list[str] = []
        n = 0
        while len(out) < count:
            candidate = f"{prefix}-{n}"
            if self.owner_of(candidate, active) == owner:
                out.append(candidate)
            n += 1
        return out
