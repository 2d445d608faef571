"""mTLS on the peer link and TLS to etcd, with real node processes, a real
etcd serving TLS with client-certificate auth, and certificates from
tests/support/certs.py."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.grpc_stack import LINK_METHOD, STREAM_STREAM, Batch, open_channel
from cluster.peerlink import NODE_HEADER
from tests.support.certs import Cert, Pki
from tests.support.cluster import ClusterNode
from tests.support.rawclient import RawClient, T
from tests.support.tlsclients import TLSEtcdServer, context
from tests.support.waiting import wait_until


def _peer_args(pki: Pki, cert: Cert, ca: Path | None = None) -> list[str]:
    return ["--peer-ssl-ca-file", str(ca or pki.ca), "--peer-ssl-certificate", str(cert.cert),
            "--peer-ssl-key", str(cert.key)]


@pytest.fixture(scope="module")
def etcd(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSEtcdServer]:
    server = TLSEtcdServer(pki, tmp_path_factory.mktemp("etcd-tls"))
    server.start()
    try:
        yield server
    finally:
        server.close()


def _node(etcd: TLSEtcdServer, pki: Pki, node_id: str, base: Path, *peer: str) -> ClusterNode:
    node = ClusterNode(node_id, etcd.endpoint, base / node_id, extra_args=[
        "--etcd-cacert", str(pki.ca), "--etcd-cert", str(pki.etcd_client.cert),
        "--etcd-key", str(pki.etcd_client.key), *peer])
    return node


def _peer_address(node: ClusterNode) -> str:
    m = wait_until(lambda: re.search(r"peer link listening on (\S+) \(mTLS\)",
                                     node.log_text()), 20, what="the peer port")
    return m.group(1)


async def _dial(address: str, ctx: object) -> str:
    """Open a peer stream as node "intruder"; the peer's node id, or the error."""
    channel = open_channel(address, ctx)  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(15), channel.request(
                LINK_METHOD, STREAM_STREAM, Batch, Batch,
                metadata={NODE_HEADER: "intruder"}) as stream:
            await stream.send_request()
            await stream.recv_initial_metadata()
            peer = str((stream.initial_metadata or {}).get(NODE_HEADER))
            await stream.cancel()
            return peer
    except Exception as e:
        return f"refused: {type(e).__name__}: {e}"
    finally:
        channel.close()


def _cross_node_job(client_node: ClusterNode, worker_node: ClusterNode) -> bytes:
    with RawClient(worker_node.host_port, timeout=30) as worker, \
            RawClient(client_node.host_port, timeout=30) as client:
        worker.can_do("tls-cross")
        worker.send(T.PRE_SLEEP)
        client.send(T.SUBMIT_JOB, "tls-cross", "u-1", "over mTLS")
        handle = client.expect(T.JOB_CREATED).payload
        worker.expect(T.NOOP, timeout=30)
        assign = worker.grab()
        assert assign.ptype == T.JOB_ASSIGN_UNIQ, assign
        job_handle, _, _, data = assign.args()
        worker.send(T.WORK_COMPLETE, job_handle, data[::-1])
        done = client.expect(T.WORK_COMPLETE, timeout=30)
        assert done.args()[0] == handle
        return done.args()[1]


def test_three_nodes_with_mtls_peers_and_tls_etcd(etcd: TLSEtcdServer, pki: Pki,
                                                  tmp_path: Path) -> None:
    nodes = [_node(etcd, pki, f"n{i}", tmp_path, *_peer_args(pki, pki.peer))
             for i in (1, 2, 3)]
    n1, n2, n3 = nodes
    try:
        for n in nodes:
            n.start()  # ready = registered through TLS etcd and active in the map
        wait_until(lambda: n1.epoch() is not None
                   and len({n.epoch() for n in nodes}) == 1, 30, what="one map on all nodes")
        # Jobs cross nodes over the mTLS link: the only worker is on n3, then n2.
        assert _cross_node_job(n1, n3) == b"SLTm revo"
        assert _cross_node_job(n3, n2) == b"SLTm revo"
        address = _peer_address(n1)
        no_cert = context(pki.ca, check_hostname=False)
        no_cert.set_alpn_protocols(["h2"])
        # Trusts the node's certificate, presents one the cluster CA did not sign.
        foreign = context(pki.ca, pki.other_peer, check_hostname=False)
        foreign.set_alpn_protocols(["h2"])
        member = context(pki.ca, pki.peer, check_hostname=False)
        member.set_alpn_protocols(["h2"])
        results = {name: asyncio.run(_dial(address, ctx)) for name, ctx in
                   (("plaintext", None), ("no certificate", no_cert), ("foreign", foreign),
                    ("member", member))}
        assert results["member"] == "n1", results
        for name in ("plaintext", "no certificate", "foreign"):
            assert results[name].startswith("refused"), results
        assert all(n.running for n in nodes)
    finally:
        for n in reversed(nodes):
            n.stop(10)


def test_a_node_with_a_foreign_certificate_cannot_join_the_link(
        etcd: TLSEtcdServer, pki: Pki, tmp_path: Path) -> None:
    n1 = _node(etcd, pki, "m1", tmp_path, *_peer_args(pki, pki.peer))
    # It may register in etcd (its etcd certificate is good), but not link.
    intruder = _node(etcd, pki, "m2", tmp_path,
                     *_peer_args(pki, pki.other_peer, ca=pki.other_ca))
    try:
        n1.start()
        intruder.launch()
        line = re.compile(r"peer m1 \(\S+\) down: TLS handshake refused \(.*\): both nodes "
                          r"need certificates from the cluster CA \(--peer-ssl-\*\)")
        wait_until(lambda: line.search(intruder.log_text()), 30,
                   what="the intruder's refusal line")
        wait_until(lambda: re.search(r"peer m2 \(\S+\) down: TLS handshake refused",
                                     n1.log_text()), 30, what="m1's refusal line")
        assert n1.running
    finally:
        intruder.stop(10)
        n1.stop(10)


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gearmesh", "serve", "-L", "127.0.0.1",
                           "-p", "0", "--http-port", "0", "--queue", "memory", *args],
                          capture_output=True, text=True, timeout=60)


def test_bad_cluster_tls_flags_refuse_to_start(pki: Pki, tmp_path: Path) -> None:
    cases = [
        (["--etcd", "127.0.0.1:1", "--peer-ssl-certificate", str(pki.peer.cert)],
         "peer mTLS needs all of --peer-ssl-ca-file, --peer-ssl-certificate and "
         "--peer-ssl-key"),
        (["--etcd", "127.0.0.1:1", *_peer_args(pki, pki.peer)[:4], "--peer-ssl-key",
          str(tmp_path / "nope.key")],
         f"cannot read peer key {tmp_path / 'nope.key'} (--peer-ssl-key): No such file or "
         "directory"),
        (["--etcd", "127.0.0.1:1", "--etcd-cert", str(pki.etcd_client.cert)],
         "--etcd-cert and --etcd-key go together"),
        (["--etcd", "127.0.0.1:1", "--etcd-cacert", str(tmp_path)],
         f"cannot read etcd CA file {tmp_path} (--etcd-cacert): Is a directory"),
        (_peer_args(pki, pki.peer), "the --peer-ssl-* and --etcd-* TLS flags need --etcd"),
    ]
    for args, message in cases:
        r = _serve(*args)
        assert r.returncode == 2, (args, r)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].endswith(message), (args, r.stderr)


def test_a_node_without_etcd_credentials_is_not_let_in(etcd: TLSEtcdServer, pki: Pki,
                                                       tmp_path: Path) -> None:
    node = ClusterNode("plain", etcd.endpoint, tmp_path / "plain")
    try:
        node.launch()
        wait_until(lambda: re.search(r"node plain: etcd \S+ unavailable", node.log_text()),
                   30, what="the etcd refusal line")
        assert node.readyz() == 503
    finally:
        node.stop(10)
