"""The etcd lease keepalive, on a thread and a connection of its own.

Why not on the event loop: a node past its capacity can keep its loop busy
for seconds (a burst of submits, a large handoff), and a keepalive that waits
for the loop misses the lease TTL; etcd then deletes the node's registration
although the node is alive, the others see it leave and rejoin, and work in
flight to it fails. This thread needs only the GIL, which the loop gives up
every switch interval, and its own gRPC channel (synchronous grpcio, no event
loop), so no queue of the loop's etcd traffic sits in front of a keepalive.

It only refreshes. When etcd says the lease is gone it tells the owner
(``on_lost``, delivered through ``post`` on the owner's loop), which takes a
new lease and registers again; ``keep`` then points the thread at it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import grpc
from aetcd import rpc

from cluster.etcdclient import make_channel

log = logging.getLogger("gearmesh.cluster")

# After a failed refresh (etcd unreachable, a slow reply) try again this soon,
# still well inside the TTL, on the next endpoint.
RETRY_INTERVAL: Final = 0.5

Post = Callable[[Callable[[], None]], object]


class LeaseKeeper:
    """Refreshes one lease every ``ttl / 3`` seconds from its own thread."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], ttl: float,
                 on_lost: Callable[[int], None], post: Post, *,
                 channel_factory: Callable[[str, int], grpc.Channel] = make_channel,
                 interval: float | None = None, rpc_timeout: float | None = None) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self._endpoints = list(endpoints)
        self._interval = interval if interval is not None else ttl / 3
        self._rpc_timeout = rpc_timeout if rpc_timeout is not None else max(ttl / 3, 0.5)
        self._on_lost = on_lost
        self._post = post
        self._factory = channel_factory
        self._lock = threading.Lock()
        self._lease: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._channel: grpc.Channel | None = None
        self._stub: Any = None
        self._endpoint = 0
        #: Monotonic time of the last successful refresh (0: none yet).
        self.last_refresh = 0.0
        self.refreshes = 0
        self.failures = 0
        #: Longest time between two successful refreshes of the same lease.
        self.longest_gap = 0.0

    def keep(self, lease_id: int | None) -> None:
        """Keep ``lease_id`` alive from now on (None: stop refreshing)."""
        with self._lock:
            if lease_id != self._lease:
                self._lease = lease_id
                self.last_refresh = time.monotonic()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gearmesh-lease-keepalive",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    # -- the thread ---------------------------------------------------------

    def _run(self) -> None:
        wait = self._interval
        try:
            while not self._stop.wait(wait):
                with self._lock:
                    lease = self._lease
                if lease is None:
                    wait = self._interval
                    continue
                wait = self._interval if self._refresh(lease) else RETRY_INTERVAL
        finally:
            self._close_channel()

    def _refresh(self, lease: int) -> bool:
        """One keepalive round trip; False when it should be retried soon."""
        try:
            ttl = self._keepalive(lease)
        except (grpc.RpcError, EOFError) as exc:
            self.failures += 1
            log.debug("lease keepalive failed at endpoint %d: %s", self._endpoint, exc)
            # A fresh connection to the next endpoint on the next try.
            self._close_channel()
            self._endpoint = (self._endpoint + 1) % len(self._endpoints)
            return False
        now = time.monotonic()
        with self._lock:
            if lease != self._lease:
                return True  # replaced meanwhile
            if ttl <= 0:
                self._lease = None
            else:
                self.longest_gap = max(self.longest_gap, now - self.last_refresh)
                self.last_refresh = now
                self.refreshes += 1
                return True
        self._post(lambda: self._on_lost(lease))
        return True

    def _keepalive(self, lease: int) -> int:
        if self._stub is None:
            host, port = self._endpoints[self._endpoint]
            self._channel = self._factory(host, port)
            self._stub = rpc.LeaseStub(self._channel)
        call = self._stub.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
                                         timeout=self._rpc_timeout)
        try:
            for reply in call:
                return int(reply.TTL)
            raise EOFError("keepalive stream ended without an answer")
        finally:
            call.cancel()

    def _close_channel(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()
