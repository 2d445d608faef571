"""A running node: the listening socket, the store, signals and lifecycle.

Start-up order matters for the durability promise: the store is replayed
before the port opens, so no client can see a half-restored queue; the node
reports ready only after that (and after joining the cluster, if any).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from node.acl import ACL
from node.admin import Admin, AdminContext
from node.clock import LoopClock
from node.config import NodeConfig
from node.connection import GearmanConnection
from node.dispatch import Dispatcher
from node.flowcontrol import FlowControl, Watermarks
from node.guard import Guard
from node.jobs import JobManager, ManagerConfig
from node.looplag import LagHistogram, LoopLagMonitor
from node.stats import Counters, FunctionStat, JobSnapshot, WorkerSnapshot
from node.store import CommitStats, Store, open_store
from node.tls import subject_cn

if TYPE_CHECKING:
    from node.api import ClusterViews

log = logging.getLogger("gearmesh.node")


class Extension(Protocol):
    """Something started with the node and stopped before it (the cluster layer)."""

    async def start(self) -> None: ...

    async def drain(self) -> None: ...

    async def stop(self) -> None: ...

    def ready(self) -> tuple[bool, str]: ...

    def epoch(self) -> int: ...


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.loop = asyncio.get_running_loop()
        self.store: Store | None = None
        self.manager = JobManager(LoopClock(self.loop), ManagerConfig(
            handle_prefix=config.handle_prefix.encode(),
            job_retries=config.job_retries,
            max_unique=config.max_unique,
            max_jobs=config.max_queue,
            all_exceptions=config.exceptions,
        ), counters=self.counters)
        self.dispatcher = Dispatcher(self.manager)
        self.admin = Admin(self.manager, AdminContext(verbose=config.verbose,
                                                      shutdown=self.request_shutdown))
        self.extensions: list[Extension] = []
        # The other nodes' views for the HTTP API, set by the composition root
        # in a cluster (node/ never imports cluster/); None = standalone.
        self.cluster_views: ClusterViews | None = None
        self._connections: set[GearmanConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._admin_server: asyncio.base_events.Server | None = None
        # Set by the command line before listen(): TLS for the Gearman port and
        # the access list (both loaded and checked at start-up).
        self.tls: ssl.SSLContext | None = None
        self.acl: ACL | None = None
        self._http: object | None = None
        self._next_sid = 0
        self._replayed = False
        self._draining = False
        self._stopped = asyncio.Event()
        self.started_at = time.time()
        #: The process's exit status once stopped: an extension sets 1 when a
        #: drain could not finish (jobs left that another node should have).
        self.exit_status = 0
        # Back-pressure (node/flowcontrol.py): the store's backlog and the
        # loop's lag are watched here; the cluster reports its peer outboxes
        # through pause_feeding/resume_feeding.
        self.flow = FlowControl()
        self._store_marks = Watermarks(config.store_backlog, config.store_backlog // 2)
        self._store_relieved: asyncio.Future[None] | None = None
        lag_ms = int(config.max_loop_lag * 1000)
        self._lag_marks = Watermarks(lag_ms, lag_ms // 5) if lag_ms > 0 else None
        self.looplag = LoopLagMonitor(self.loop, on_lag=self._on_lag)
        #: Set by the cluster: peer node → (frames, bytes) queued for it.
        self.peer_outboxes: Callable[[], Mapping[str, tuple[int, int]]] = dict

    # -- NodeView

    def function_stats(self) -> Iterable[FunctionStat]:
        return self.manager.function_stats()

    def connection_count(self) -> int:
        return len(self._connections)

    def readiness(self) -> tuple[bool, str]:
        if not self._replayed:
            return False, "replaying the job store"
        if self._server is None:
            return False, "opening the Gearman port"
        if self._draining:
            return False, "draining"
        for ext in self.extensions:
            ok, why = ext.ready()
            if not ok:
                return False, why
        return True, "ready"

    def cluster_epoch(self) -> int:
        return max((ext.epoch() for ext in self.extensions), default=0)

    def queued_jobs(self, function: bytes, limit: int) -> tuple[int, list[JobSnapshot]]:
        return self.manager.queued_jobs(function, limit)

    def worker_snapshots(self) -> list[WorkerSnapshot]:
        return self.manager.worker_snapshots()

    def cancel_job(self, handle: bytes) -> bool:
        # The admin `cancel job` rule, whoever asks (admin line or HTTP).
        return self.manager.cancel(handle)

    @property
    def draining(self) -> bool:
        return self._draining

    def http_action_allowed(self, action: str) -> tuple[bool, str]:
        """The one rule for actions asked over HTTP (the dashboard's cancel).

        Access control hook: when the node has an ACL, this must answer as
        the ACL answers the admin command ``action`` for the HTTP caller
        (an HTTP request carries no certificate today, so with an ACL on it
        must refuse unless the ACL grants the action to anonymous callers).
        """
        if self.config.http_actions != "on":
            return False, "actions over HTTP are off (--http-actions off)"
        if self.acl is not None:
            # No certificate, no name: the ACL cannot grant this caller anything.
            return False, "the node has an ACL (--acl-file): actions need a certificate"
        return True, ""

    @property
    def node_id(self) -> str:
        return self.config.effective_node_id

    @property
    def queue_kind(self) -> str:
        return self.config.queue

    def loop_lag(self) -> LagHistogram:
        return self.looplag.histogram

    # -- back-pressure: the public surface the cluster layer uses

    def pause_feeding(self, reason: str) -> None:
        """Stop reading submitting connections until ``resume_feeding(reason)``
        (e.g. ``reason="peer n2"`` while the outbox to n2 is full)."""
        if reason not in self.flow.reasons:
            log.info("saturated (%s): pausing submitting connections", reason)
        self.flow.saturated(reason)

    def resume_feeding(self, reason: str) -> None:
        self.flow.relieved(reason)

    def check_store(self) -> None:
        """Compare the store's backlog with its watermarks (after submits,
        after each commit)."""
        store = self.store
        if store is None:
            return
        change = self._store_marks.update(store.backlog())
        if change is None:
            return
        self.flow.set("store", change)
        if change is False and self._store_relieved is not None:
            if not self._store_relieved.done():
                self._store_relieved.set_result(None)
            self._store_relieved = None

    def intake_gate(self) -> asyncio.Future[None] | None:
        """None while the store keeps up, else a future done once it does:
        the peer link awaits it before reading the next batch of forwarded
        requests, so gRPC's flow control slows the sending node down."""
        self.check_store()
        if not self._store_marks.saturated:
            return None
        if self._store_relieved is None:
            self._store_relieved = self.loop.create_future()
        return self._store_relieved

    def _on_lag(self, lag: float) -> None:
        if self._lag_marks is not None:
            self.flow.set("event loop", self._lag_marks.update(int(lag * 1000)))

    # -- connections

    def new_session_id(self) -> int:
        self._next_sid += 1
        return self._next_sid

    def admit(self, conn: GearmanConnection) -> bool:
        if len(self._connections) >= self.config.max_connections:
            self.counters.connections_refused += 1
            log.warning("refusing a connection: %d open (--max-connections)",
                        len(self._connections))
            return False
        self._connections.add(conn)
        self.counters.connections_accepted += 1
        return True

    def guard_for(self, transport: asyncio.BaseTransport, admin_only: bool) -> Guard | None:
        """The permission check for a new connection (None: nothing to check)."""
        if self.acl is None and not admin_only:
            return None
        subject = None if admin_only else subject_cn(transport.get_extra_info("peercert"))
        return Guard(self.acl, subject, function_of=self._function_of, admin_only=admin_only)

    def _function_of(self, handle: bytes) -> bytes | None:
        job = self.manager.job_by_handle(handle)
        return None if job is None else job.fn.name.split(b"\0", 1)[0]

    def release(self, conn: GearmanConnection) -> None:
        self._connections.discard(conn)

    # -- lifecycle

    def _on_commit(self, stats: CommitStats) -> None:
        c = self.counters
        c.store_commits += 1
        c.store_commit_jobs += stats.jobs
        c.store_commit_seconds += stats.seconds
        self.check_store()

    def open_store(self) -> None:
        cfg = self.config
        self.store = open_store(cfg.queue, cfg.data_dir, self.loop.call_soon_threadsafe,
                                fsync=cfg.fsync, recover=cfg.store_recover,
                                max_bytes=cfg.store_max_bytes, on_commit=self._on_commit,
                                defer=self.loop.call_soon)
        self.manager.store = self.store

    async def replay(self) -> int:
        """Queue the stored background jobs again. Runs on the loop (the job
        manager is single-threaded) in slices, so HTTP keeps answering."""
        assert self.store is not None
        m = self.manager
        m.next_id = max(m.next_id, self.store.next_id())
        n = 0
        for rec in self.store.load():
            m.restore(rec)
            n += 1
            if n % 5000 == 0:
                await asyncio.sleep(0)
        self._replayed = True
        if n:
            log.warning("replayed %d background jobs from %s", n, self.config.data_dir)
        return n

    async def listen(self) -> None:
        cfg = self.config
        tls = self.tls
        self.looplag.start()
        self._server = await self.loop.create_server(
            lambda: GearmanConnection(self), host=cfg.listen or None, port=cfg.port,
            reuse_address=True, backlog=1024, ssl=tls,
            # A client that never finishes its handshake is dropped after this.
            ssl_handshake_timeout=cfg.ssl_handshake_timeout if tls is not None else None)
        if cfg.admin_port:
            # Plaintext for local tools (gearadmin, probes): loopback only, and
            # text commands only, so it cannot submit or register.
            self._admin_server = await self.loop.create_server(
                lambda: GearmanConnection(self, admin_only=True), host="127.0.0.1",
                port=cfg.admin_port, reuse_address=True)

    def port_open(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        assert self._server is not None
        sock = self._server.sockets[0]
        port: int = sock.getsockname()[1]
        return port

    async def start_http(self) -> None:
        if not self.config.http_port:
            return
        from node.http import start_http  # aiohttp is imported only when HTTP is on
        host = self.config.http_listen or self.config.listen
        self._http = await start_http(self, host, self.config.http_port)

    async def start_extensions(self) -> None:
        for ext in self.extensions:
            await ext.start()

    def install_signals(self) -> None:
        loop = self.loop
        loop.add_signal_handler(signal.SIGTERM, self.request_shutdown, True)
        loop.add_signal_handler(signal.SIGINT, self.request_shutdown, False)
        loop.add_signal_handler(signal.SIGUSR1, self._graceful_when_idle)
        loop.add_signal_handler(signal.SIGHUP, _reopen_logs)

    def request_shutdown(self, graceful: bool = True) -> None:
        if self._draining and graceful:
            return
        self._draining = True
        self.loop.create_task(self._shutdown(graceful))

    def _graceful_when_idle(self) -> None:
        # gearmand's SIGUSR1: refuse new connections, exit once no job is left.
        log.warning("SIGUSR1: closing the port, exiting when the last job is done")
        self._draining = True
        if self._server is not None:
            self._server.close()
        if not self.manager.jobs:
            self.request_shutdown(False)
        else:
            self.manager.on_idle = lambda: self.request_shutdown(False)

    async def _shutdown(self, graceful: bool) -> None:
        log.warning("shutting down (%s)", "draining" if graceful else "now")
        if self._server is not None:
            self._server.close()
        if self._admin_server is not None:
            self._admin_server.close()
        if graceful:
            # One budget for the whole drain (handing work over, then waiting
            # for running jobs), so a pod's terminationGracePeriodSeconds
            # computed from --grace is never overrun.
            deadline = self.loop.time() + self.config.grace
            for ext in self.extensions:
                try:
                    await ext.drain()
                except Exception:
                    log.exception("drain failed")
            while self._running_jobs() and self.loop.time() < deadline:
                await asyncio.sleep(0.05)
            left = self._running_jobs()
            if left:
                log.warning("grace period over with %d jobs still running", left)
        for conn in list(self._connections):
            t = conn._transport
            if t is not None:
                t.close()
        for ext in reversed(self.extensions):
            try:
                await ext.stop()
            except Exception:
                log.exception("stopping an extension failed")
        if self._http is not None:
            from node.http import stop_http
            await stop_http(self._http)
        if self.store is not None:
            await self.loop.run_in_executor(None, self.store.close)
        self.looplag.stop()
        self._stopped.set()

    def _running_jobs(self) -> int:
        return sum(fn.running for fn in self.manager.functions.values())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _reopen_logs() -> None:
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.acquire()
            try:
                h.close()
                h.stream = h._open()
            finally:
                h.release()


def drop_privileges(user: str) -> None:
    import pwd
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise SystemExit(f"gearmesh: unknown user {user!r}") from None
    if os.getuid() != 0:
        if os.getuid() == pw.pw_uid:
            return
        raise SystemExit(f"gearmesh: -u {user} needs root (running as uid {os.getuid()})")
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
