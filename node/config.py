"""`gearmesh serve` flags: gearmand's familiar ones plus ours, each with a
GEARMESH_* environment variable (docs/configuration.md is the table)."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from node.handles import node_prefix

LEVELS = ("FATAL", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG")


@dataclass
class NodeConfig:
    port: int = 4730
    listen: str = "0.0.0.0"
    log_file: str = "stderr"
    pid_file: str | None = None
    daemon: bool = False
    user: str | None = None
    job_retries: int = 0
    threads: int = 4
    verbose: str = "ERROR"
    worker_wakeup: int = 0
    job_handle_prefix: str | None = None
    exceptions: bool = False
    data_dir: Path = Path("gearmesh-data")
    queue: str = "sqlite"
    fsync: str = "batch"
    store_recover: bool = False
    store_max_bytes: int = 0
    max_packet: int = 64 * 1024 * 1024
    max_unique: int = 64
    max_connections: int = 10000
    max_queue: int = 0
    max_output_buffer: int = 16 * 1024 * 1024
    grace: float = 30.0
    store_backlog: int = 50_000
    peer_outbox: int = 8 * 1024 * 1024
    max_loop_lag: float = 0.5
    http_port: int = 4732
    http_listen: str | None = None
    http_actions: str = "on"  # the dashboard's cancel button (POST /api/jobs/cancel)
    etcd: str | None = None
    etcd_prefix: str = "/gearmesh"
    node_id: str | None = None
    peer_port: int = 4731
    peer_defer_ms: float = 2.0
    advertise: str | None = None
    lease_ttl: int = 5
    replicas: int = 1  # copies of each background job on other nodes (0 or 1)
    single_copy: bool = False  # acknowledge with one copy when no replica is reachable
    # security (docs/security.md)
    ssl: bool = False
    ssl_ca_file: str | None = None
    ssl_certificate: str | None = None
    ssl_key: str | None = None
    ssl_verify_client: bool = False
    ssl_handshake_timeout: float = 10.0
    admin_port: int = 0
    acl_file: Path | None = None
    peer_ssl_ca_file: str | None = None
    peer_ssl_certificate: str | None = None
    peer_ssl_key: str | None = None
    etcd_cacert: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None

    @property
    def effective_node_id(self) -> str:
        return self.node_id or socket.gethostname()

    @property
    def handle_prefix(self) -> str:
        return self.job_handle_prefix or node_prefix(self.effective_node_id)

    @property
    def advertise_host(self) -> str:
        if self.advertise:
            return self.advertise
        if self.listen not in ("0.0.0.0", "::", ""):
            return self.listen
        return socket.gethostname()


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _env(name: str) -> str | None:
    return os.environ.get("GEARMESH_" + name.upper().replace("-", "_"))


def _level(value: str) -> str:
    v = value.upper()
    if v not in LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {value!r} (one of {', '.join(LEVELS)})")
    return v


def _size(value: str) -> int:
    v = value.strip().upper()
    mult = 1
    for suffix, m in (("K", 1024), ("M", 1024**2), ("G", 1024**3)):
        if v.endswith(suffix) or v.endswith(suffix + "B") or v.endswith(suffix + "IB"):
            mult = m
            v = v.rstrip("IB").rstrip(suffix)
            break
    try:
        n = int(v) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"negative size: {value!r}")
    return n


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value!r}")
    return n


def _nonneg(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value!r}")
    return n


def _positive(value: str) -> int:
    n = _nonneg(value)
    if n < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2: {value!r}")
    return n


def _positive_size(value: str) -> int:
    n = _size(value)
    if n < 4096:
        raise argparse.ArgumentTypeError(f"must be at least 4K: {value!r}")
    return n


def _nonneg_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value!r}")
    return x


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    d = NodeConfig()
    g = p.add_argument_group("gearmand-compatible")
    g.add_argument("-p", "--port", type=_port, default=d.port, help="Gearman port (4730)")
    g.add_argument("-L", "--listen", default=d.listen, help="address to bind (all)")
    g.add_argument("-l", "--log-file", default=d.log_file,
                   help="log file; 'stderr' or 'none' (stderr)")
    g.add_argument("-P", "--pid-file", default=None, help="write the process id here")
    g.add_argument("-d", "--daemon", action="store_true", help="detach into the background")
    g.add_argument("-u", "--user", default=None, help="drop root privileges to this user")
    g.add_argument("-j", "--job-retries", type=_nonneg, default=d.job_retries,
                   help="fail a job after this many worker losses (0 = never)")
    g.add_argument("-t", "--threads", type=_nonneg, default=d.threads,
                   help="accepted for compatibility; ignored")
    g.add_argument("-v", "--verbose", nargs="?", const="INFO", default=None, type=_level,
                   help="log level (ERROR); -v alone means INFO")
    g.add_argument("-w", "--worker-wakeup", type=_nonneg, default=0,
                   help="accepted for compatibility; one worker is woken per job")
    g.add_argument("--job-handle-prefix", default=None, help="job handle prefix (H:<node-id>)")
    g.add_argument("--exceptions", action="store_true",
                   help="send WORK_EXCEPTION to every client")
    q = p.add_argument_group("queue")
    q.add_argument("--data-dir", type=Path, default=d.data_dir, help="durable queue directory")
    q.add_argument("-q", "--queue", choices=("sqlite", "memory"), default=d.queue,
                   help="sqlite: background jobs survive restarts; memory: they do not")
    q.add_argument("--fsync", choices=("always", "batch", "never"), default=d.fsync,
                   help="always: survive power loss; batch/never: survive kill -9")
    q.add_argument("--store-recover", action="store_true",
                   help="move an unreadable store aside instead of refusing to start")
    q.add_argument("--store-max-bytes", type=_size, default=0,
                   help="cap the store file; submits past it get QUEUE_ERROR (0 = no cap)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-packet", type=_size, default=d.max_packet,
                     help="largest packet payload accepted (64M)")
    lim.add_argument("--max-unique", type=_nonneg, default=d.max_unique,
                     help="longest unique id accepted (64)")
    lim.add_argument("--max-connections", type=_nonneg, default=d.max_connections)
    lim.add_argument("--max-queue", type=_nonneg, default=d.max_queue,
                     help="most jobs held in total (0 = no limit)")
    lim.add_argument("--max-output-buffer", type=_size, default=d.max_output_buffer,
                     help="unread replies that get a connection closed (16M)")
    lim.add_argument("--grace", type=float, default=d.grace,
                     help="seconds SIGTERM waits for running jobs (30)")
    bp = p.add_argument_group("back-pressure (submitting connections stop being read)")
    bp.add_argument("--store-backlog", type=_positive, default=d.store_backlog,
                    help="jobs waiting for the store's commit (50000); resume at half")
    bp.add_argument("--peer-outbox", type=_positive_size, default=d.peer_outbox,
                    help="bytes queued for one peer node (8M); resume at a quarter")
    bp.add_argument("--max-loop-lag", type=_nonneg_float, default=d.max_loop_lag,
                    help="event-loop lag in seconds (0.5; 0 = ignore the lag)")
    h = p.add_argument_group("http")
    h.add_argument("--http-port", type=_port, default=d.http_port,
                   help="/healthz /readyz /metrics port; 0 disables (4732)")
    h.add_argument("--http-listen", default=None, help="address for HTTP (--listen)")
    h.add_argument("--http-actions", choices=("on", "off"), default=d.http_actions,
                   help="allow cancelling queued jobs from the dashboard/API (on)")
    c = p.add_argument_group("cluster")
    c.add_argument("--etcd", default=None, help="etcd endpoints, comma-separated")
    c.add_argument("--etcd-prefix", default=d.etcd_prefix)
    c.add_argument("--node-id", default=None, help="stable node id (host name)")
    c.add_argument("--peer-port", type=_port, default=d.peer_port)
    c.add_argument("--peer-defer-ms", type=_nonneg_float, default=d.peer_defer_ms,
                   help="ms a frame nothing waits for may wait to share a message (2)")
    c.add_argument("--advertise", default=None, help="address other nodes reach us at")
    c.add_argument("--lease-ttl", type=_nonneg, default=d.lease_ttl)
    c.add_argument("--replicas", type=int, choices=(0, 1), default=d.replicas,
                   help="copies of each background job on another node's disk (1; 0 = off)")
    c.add_argument("--single-copy", action="store_true",
                   help="acknowledge a background job with one copy when no replica is "
                        "reachable (default: QUEUE_ERROR)")
    _add_security_arguments(p, d)
    _apply_env_defaults(p)


def _positive_seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {value!r}")
    return n


def _add_security_arguments(p: argparse.ArgumentParser, d: NodeConfig) -> None:
    s = p.add_argument_group("security (docs/security.md)")
    s.add_argument("--ssl", action="store_true",
                   help="TLS on the Gearman port (gearmand's flag); GEARMAND_CA_CERTIFICATE, "
                        "GEARMAND_SERVER_PEM, GEARMAND_SERVER_KEY override the files")
    s.add_argument("--ssl-ca-file", default=None, help="CA that signs client certificates")
    s.add_argument("--ssl-certificate", default=None, help="server certificate (PEM)")
    s.add_argument("--ssl-key", default=None, help="server private key (PEM)")
    s.add_argument("--ssl-verify-client", action="store_true",
                   help="require a client certificate signed by --ssl-ca-file")
    s.add_argument("--ssl-handshake-timeout", type=_positive_seconds,
                   default=d.ssl_handshake_timeout,
                   help="seconds a TLS handshake may take before the connection is dropped (10)")
    s.add_argument("--admin-port", type=_port, default=d.admin_port,
                   help="plaintext admin-text-only listener on 127.0.0.1 (0 = none)")
    s.add_argument("--acl-file", type=Path, default=None,
                   help="who may register, submit, grant and administer, by certificate CN")
    s.add_argument("--peer-ssl-ca-file", default=None,
                   help="cluster CA: peers must present a certificate it signed (mTLS)")
    s.add_argument("--peer-ssl-certificate", default=None,
                   help="this node's peer certificate (PEM), signed by the cluster CA")
    s.add_argument("--peer-ssl-key", default=None, help="this node's peer private key (PEM)")
    s.add_argument("--etcd-cacert", "--etcd-ca", default=None,
                   help="CA of etcd's server certificate (etcdctl's --cacert)")
    s.add_argument("--etcd-cert", default=None, help="client certificate for etcd (--cert)")
    s.add_argument("--etcd-key", default=None, help="client key for etcd (--key)")


def _apply_env_defaults(p: argparse.ArgumentParser) -> None:
    """GEARMESH_<FLAG> becomes the flag's default, so the command line wins."""
    for action in p._actions:
        if not action.option_strings or action.dest == "help":
            continue
        raw = _env(action.dest)
        if raw is None:
            continue
        try:
            if isinstance(action, argparse._StoreTrueAction):
                low = raw.strip().lower()
                if low not in _TRUE | _FALSE:
                    raise argparse.ArgumentTypeError(f"expected true/false, got {raw!r}")
                value: object = low in _TRUE
            elif action.type is not None:
                value = action.type(raw)  # type: ignore[operator]
            else:
                value = raw
            if action.choices is not None and value not in action.choices:
                raise argparse.ArgumentTypeError(
                    f"expected one of {', '.join(map(str, action.choices))}, got {raw!r}")
        except (argparse.ArgumentTypeError, ValueError) as e:
            p.error(f"environment GEARMESH_{action.dest.upper()}: {e}")
        action.default = value


def config_from_args(ns: argparse.Namespace) -> NodeConfig:
    fields = NodeConfig.__dataclass_fields__
    return NodeConfig(**{k: v for k, v in vars(ns).items() if k in fields and v is not None})
