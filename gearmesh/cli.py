"""`gearmesh` command line: the composition root.

This is the one place that knows both layers: it builds a node from `node/`
and, only when `--etcd` is given, attaches the cluster layer from `cluster/`
(so a standalone node never imports gRPC or etcd code).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

from node.config import NodeConfig, add_serve_arguments, config_from_args
from node.store import StoreError

if TYPE_CHECKING:
    from gearmesh.security import Security

log = logging.getLogger("gearmesh")

_LEVELS = {"FATAL": logging.CRITICAL, "ALERT": logging.CRITICAL, "CRITICAL": logging.CRITICAL,
           "ERROR": logging.ERROR, "WARNING": logging.WARNING, "NOTICE": logging.WARNING,
           "INFO": logging.INFO, "DEBUG": logging.DEBUG}


class Parser(argparse.ArgumentParser):
    """Errors are one line and exit 2, never a usage dump or a traceback."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(message: str) -> NoReturn:
    print(f"gearmesh: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_parser() -> Parser:
    p = Parser(prog="gearmesh", description="A Gearman job server that runs as a cluster.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    serve = sub.add_parser("serve", help="run a node",
                           description="Run a gearmesh node (flags follow gearmand's).")
    add_serve_arguments(serve)
    from gearmesh import bench
    b = sub.add_parser("bench", help="load-test any Gearman server or cluster",
                       description="Load-test any Gearman server or cluster.")
    if hasattr(bench, "add_arguments"):
        bench.add_arguments(b)
    from gearmesh.status import add_source_arguments
    st = sub.add_parser("status", help="cluster-wide view: functions, nodes, workers")
    add_source_arguments(st)
    st.add_argument("--json", action="store_true", help="the /api/status JSON")
    top = sub.add_parser("top", help="live cluster view in the terminal (q quits)")
    add_source_arguments(top)
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    return p


def setup_logging(cfg: NodeConfig) -> None:
    level = _LEVELS.get(cfg.verbose, logging.ERROR)
    # Start-up, shutdown and replay are logged at WARNING so an operator sees
    # them with the default level.
    level = min(level, logging.WARNING)
    root = logging.getLogger()
    root.handlers.clear()
    if cfg.log_file == "none":
        root.addHandler(logging.NullHandler())
    else:
        handler: logging.Handler
        if cfg.log_file == "stderr":
            handler = logging.StreamHandler(sys.stderr)
        else:
            try:
                handler = logging.FileHandler(cfg.log_file)
            except OSError as e:
                fail(f"cannot open log file {cfg.log_file}: {e.strerror}")
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def _check_user(user: str | None) -> None:
    if user is None:
        return
    import pwd
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        fail(f"unknown user {user!r} (-u)")
    if os.getuid() != 0 and os.getuid() != pw.pw_uid:
        fail(f"-u {user} needs root")


def _daemonize() -> int:
    """Fork into the background; the parent exits with the child's start-up
    status, so `gearmesh serve -d` still reports a port in use. Returns the
    fd the child writes its status to."""
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        status = os.read(r, 1)
        os._exit(0 if status == b"0" else 2)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    return w


def _detach_stdio() -> None:
    # Only once start-up succeeded: until then errors still reach the terminal.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def _startup_error(cfg: NodeConfig, message: str) -> int:
    """Say it once on stderr (and in the log file, when there is one)."""
    if cfg.log_file not in ("stderr", "none"):
        log.error("%s", message)
    print(f"gearmesh: error: {message}", file=sys.stderr)
    return 2


async def _serve(cfg: NodeConfig, ready_fd: int | None, security: Security) -> int:
    from node.server import Node, drop_privileges

    node = Node(cfg)
    node.tls, node.acl = security.gearman_tls, security.acl
    if cfg.etcd:
        # Attached (not started) now, so /readyz waits for the cluster join.
        from cluster.attach import attach_cluster
        from cluster.views import ClusterViews
        ext = attach_cluster(node, cfg, security.cluster)
        node.extensions.append(ext)
        # The HTTP API's view of the other nodes (node/ cannot import cluster/).
        node.cluster_views = ClusterViews(cfg.effective_node_id, lambda: ext.membership,
                                          ext.links)
    try:
        node.open_store()
    except StoreError as e:
        return _startup_error(cfg, str(e))
    # HTTP first: /healthz answers and /readyz says "replaying" while a large
    # queue is read back, so an orchestrator neither kills nor routes to us.
    try:
        await node.start_http()
    except OSError as e:
        host = cfg.http_listen or cfg.listen
        return _startup_error(cfg, f"cannot listen for HTTP on {host}:{cfg.http_port}: "
                                   f"{e.strerror or e}")
    try:
        await node.replay()
    except StoreError as e:
        return _startup_error(cfg, str(e))
    # Replayed jobs live until they run: keep the collector from rescanning them.
    gc.freeze()
    try:
        await node.listen()
    except OSError as e:
        where = (f"127.0.0.1:{cfg.admin_port} (--admin-port)" if node.port_open()
                 else f"{cfg.listen}:{cfg.port}")
        return _startup_error(cfg, f"cannot listen on {where}: {e.strerror or e}")
    if cfg.pid_file:
        # Before dropping privileges, as gearmand does: /var/run is root's.
        try:
            with open(cfg.pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as e:
            return _startup_error(cfg, f"cannot write pid file {cfg.pid_file}: {e.strerror}")
    if cfg.user:
        if os.getuid() == 0:
            _chown_tree(cfg.data_dir, cfg.user)
        drop_privileges(cfg.user)
    try:
        await node.start_extensions()
    except Exception as e:
        log.debug("cluster start failed", exc_info=True)
        return _startup_error(cfg, f"cluster start failed: {e}")
    node.install_signals()
    log.warning("gearmesh node %s listening on %s:%d (queue %s)", cfg.effective_node_id,
                cfg.listen, node.port, cfg.queue)
    if ready_fd is not None:
        os.write(ready_fd, b"0")
        os.close(ready_fd)
        _detach_stdio()
    await node.wait_stopped()
    if cfg.pid_file:
        with contextlib.suppress(OSError):
            os.unlink(cfg.pid_file)
    if node.exit_status:
        log.error("gearmesh node stopped with jobs it should have handed over (exit %d)",
                  node.exit_status)
    else:
        log.warning("gearmesh node stopped")
    return node.exit_status


def _chown_tree(path: os.PathLike[str] | str, user: str) -> None:
    import pwd
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, pw.pw_uid, pw.pw_gid)


def serve(ns: argparse.Namespace) -> int:
    cfg = config_from_args(ns)
    cfg.data_dir = cfg.data_dir.absolute()
    _check_user(cfg.user)
    if cfg.etcd and cfg.job_handle_prefix:
        fail("--job-handle-prefix cannot be used with --etcd: in a cluster a handle "
             "must name its node (H:<node-id>)")
    from gearmesh.security import SecurityError, load_security
    try:
        security = load_security(cfg)
    except SecurityError as e:
        fail(str(e))
    if cfg.pid_file:
        cfg.pid_file = os.path.abspath(cfg.pid_file)
    if cfg.log_file not in ("stderr", "none"):
        cfg.log_file = os.path.abspath(cfg.log_file)
    ready_fd = _daemonize() if cfg.daemon else None
    setup_logging(cfg)
    # A job server holds many long-lived objects and makes few reference
    # cycles; the default thresholds make full collections of a large queue
    # the node's longest pauses (p99 submit latency). Collect less often.
    gc.set_threshold(50_000, 20, 100)
    # The store's writer thread gives up the GIL for every SQLite step and
    # waits up to a switch interval to get it back from the busy event loop;
    # a shorter interval keeps group commits short (lower submit latency).
    sys.setswitchinterval(0.0005)
    try:
        import uvloop
        rc = uvloop.run(_serve(cfg, ready_fd, security))
    except ImportError:
        rc = asyncio.run(_serve(cfg, ready_fd, security))
    # The loop's signal handlers are gone; a second SIGTERM from an impatient
    # supervisor must not turn a clean exit into "killed by signal".
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return rc


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "serve":
        return serve(ns)
    if ns.command == "bench":
        from gearmesh import bench
        rc: int = bench.run(ns)
        return rc
    if ns.command == "status":
        from gearmesh.status import run_status
        return run_status(ns)
    if ns.command == "top":
        from gearmesh.top import run_top
        return run_top(ns)
    return 2


if __name__ == "__main__":
    sys.exit(main())
