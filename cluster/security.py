"""Transport security between nodes and to etcd, loaded once at start-up.

- The peer link is mutual TLS: every node presents a certificate signed by
  the cluster's CA (``--peer-ssl-ca-file``) and accepts only such
  certificates, so a process without one cannot open a stream. Membership of
  the cluster is the proof, not a host name: nodes dial the addresses other
  nodes publish in etcd, which in Kubernetes are pod IPs no certificate can
  list in advance. The cluster CA should therefore sign nothing but the
  cluster's nodes.
- etcd is reached over TLS with etcdctl's three files (``--etcd-cacert``,
  ``--etcd-cert``, ``--etcd-key``); etcd checks the client certificate when
  it runs with ``--client-cert-auth``, and gRPC checks etcd's certificate
  against the host name dialled, as etcdctl does.

Every problem is a :class:`node.tls.TLSError` naming the file and flag, so
the command line turns it into one line and exit status 2.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import grpc

from node.config import NodeConfig
from node.tls import TLSError, check_readable, load_ca, load_chain

# gRPC runs over HTTP/2, which TLS negotiates by ALPN.
_ALPN = ["h2"]


@dataclass(frozen=True)
class ClusterSecurity:
    peer_server: ssl.SSLContext | None = None
    peer_client: ssl.SSLContext | None = None
    etcd: grpc.ChannelCredentials | None = None


def _peer_contexts(ca: str, cert: str, key: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    flags = ("--peer-ssl-ca-file", "--peer-ssl-certificate", "--peer-ssl-key")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        load_chain(ctx, cert, key, flags[1], flags[2])
        load_ca(ctx, ca, flags[0])
        ctx.set_alpn_protocols(_ALPN)
        ctx.verify_mode = ssl.CERT_REQUIRED
    client.check_hostname = False  # see the module docstring: the CA is the identity
    return server, client


def _read(path: str, what: str, flag: str) -> bytes:
    with open(check_readable(path, what, flag), "rb") as f:
        return f.read()


def _etcd_credentials(ca: str | None, cert: str | None,
                      key: str | None) -> grpc.ChannelCredentials:
    if (cert is None) != (key is None):
        raise TLSError("--etcd-cert and --etcd-key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "etcd CA file", "--etcd-cacert") if ca else None,
        private_key=_read(key, "etcd client key", "--etcd-key") if key else None,
        certificate_chain=_read(cert, "etcd client certificate", "--etcd-cert") if cert
        else None)


def load_cluster_security(cfg: NodeConfig) -> ClusterSecurity:
    peer = (cfg.peer_ssl_ca_file, cfg.peer_ssl_certificate, cfg.peer_ssl_key)
    server = client = None
    if any(peer):
        ca, cert, key = peer
        if not (ca and cert and key):
            raise TLSError("peer mTLS needs all of --peer-ssl-ca-file, --peer-ssl-certificate "
                           "and --peer-ssl-key")
        server, client = _peer_contexts(check_readable(ca, "peer CA file", "--peer-ssl-ca-file"),
                                        check_readable(cert, "peer certificate",
                                                       "--peer-ssl-certificate"),
                                        check_readable(key, "peer key", "--peer-ssl-key"))
    etcd = None
    if cfg.etcd_cacert or cfg.etcd_cert or cfg.etcd_key:
        etcd = _etcd_credentials(cfg.etcd_cacert, cfg.etcd_cert, cfg.etcd_key)
    return ClusterSecurity(server, client, etcd)
