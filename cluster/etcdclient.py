"""The one place etcd connections are built.

Membership talks to etcd through an asyncio client (aetcd) on the node's
event loop; the lease keepalive uses a plain synchronous gRPC channel on its
own thread (cluster/keepalive.py). Both must reach etcd the same way (the
same channel options and the same TLS credentials), so both are built here.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import aetcd
import grpc
import grpc.aio
from aetcd import rpc, watcher
from aetcd.client import _handle_errors

CHANNEL_OPTIONS: Final[dict[str, Any]] = {
    # Each session gets its own TCP connection: gRPC would otherwise hand a new
    # channel the shared subchannel that is still in reconnect backoff from the
    # previous outage, delaying recovery by up to its backoff (minutes).
    "grpc.use_local_subchannel_pool": 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2000,
}


class _TLSClient(aetcd.Client):  # type: ignore[misc]
    """aetcd 1.0 only opens plaintext channels (its ``connect`` calls
    ``insecure_channel``). This is that ``connect`` with a TLS channel; aetcd
    has no username/password here, which gearmesh does not use."""

    def __init__(self, host: str, port: int, *, credentials: grpc.ChannelCredentials,
                 **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._credentials = credentials

    @_handle_errors  # type: ignore[untyped-decorator]
    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:  # type: ignore[has-type]
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            self.channel = grpc.aio.secure_channel(f"{self._host}:{self._port}",
                                                   self._credentials,
                                                   options=list(self._options.items()))
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout,
                                            metadata=self.metadata)
            self._connected.set()
        finally:
            self._is_connecting = False


def make_client(host: str, port: int, timeout: float,
                credentials: grpc.ChannelCredentials | None = None) -> aetcd.Client:
    """An asyncio etcd client for the calling thread's event loop (TLS when
    given credentials, see cluster/security.py)."""
    # aetcd's annotation says int; it passes the value to gRPC, which takes
    # fractional seconds.
    if credentials is not None:
        return _TLSClient(host, port, credentials=credentials, timeout=timeout,
                          options=dict(CHANNEL_OPTIONS))
    return aetcd.Client(host, port, timeout=timeout,  # type: ignore[arg-type,unused-ignore]
                        options=dict(CHANNEL_OPTIONS))


def make_channel(host: str, port: int,
                 credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A synchronous gRPC channel to etcd (no event loop involved)."""
    target = f"[{host}]" if ":" in host else host
    options = list(CHANNEL_OPTIONS.items())
    if credentials is not None:
        return grpc.secure_channel(f"{target}:{port}", credentials, options=options)
    return grpc.insecure_channel(f"{target}:{port}", options=options)
