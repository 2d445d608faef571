"""Everything that secures a node's sockets, loaded and checked before
anything starts: the Gearman port's TLS context, the ACL, and (in a cluster)
the peer link's mTLS contexts and etcd's TLS credentials.

A problem is a :class:`SecurityError` with one line naming the file and the
flag; the command line prints it and exits 2. A node never falls back to
plaintext (gearmand built without TLS silently does when given ``--ssl``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.acl import ACL, ACLError, load_acl
from node.config import NodeConfig
from node.tls import TLSError, TLSFiles, gearmand_env_override, server_context

if TYPE_CHECKING:
    from cluster.security import ClusterSecurity


class SecurityError(Exception):
    pass


@dataclass(frozen=True)
class Security:
    gearman_tls: ssl.SSLContext | None = None
    acl: ACL | None = None
    cluster: ClusterSecurity | None = None


def _gearman_port(cfg: NodeConfig) -> tuple[ssl.SSLContext | None, ACL | None]:
    if not cfg.ssl:
        for flag, value in (("--ssl-certificate", cfg.ssl_certificate),
                            ("--ssl-key", cfg.ssl_key), ("--ssl-ca-file", cfg.ssl_ca_file),
                            ("--ssl-verify-client", cfg.ssl_verify_client),
                            ("--acl-file", cfg.acl_file)):
            if value:
                # An ACL names clients by their certificates: no TLS, no names.
                raise SecurityError(f"{flag} needs --ssl (the port would be plaintext)")
        return None, None
    files = gearmand_env_override(TLSFiles(cfg.ssl_ca_file, cfg.ssl_certificate, cfg.ssl_key))
    ctx = server_context(files, verify_client=cfg.ssl_verify_client,
                         want_client_cert=cfg.acl_file is not None)
    acl = load_acl(cfg.acl_file) if cfg.acl_file is not None else None
    return ctx, acl


def load_security(cfg: NodeConfig) -> Security:
    try:
        ctx, acl = _gearman_port(cfg)
        cluster = None
        if cfg.etcd:
            from cluster.security import load_cluster_security
            cluster = load_cluster_security(cfg)
        elif any((cfg.peer_ssl_ca_file, cfg.peer_ssl_certificate, cfg.peer_ssl_key,
                  cfg.etcd_cacert, cfg.etcd_cert, cfg.etcd_key)):
            raise SecurityError("the --peer-ssl-* and --etcd-* TLS flags need --etcd")
    except (TLSError, ACLError) as e:
        raise SecurityError(str(e)) from None
    return Security(ctx, acl, cluster)
