"""The one place etcd connections are built.

Membership talks to etcd through an asyncio client (aetcd) on the node's
event loop; the lease keepalive uses a plain synchronous gRPC channel on its
own thread (cluster/keepalive.py). Both must reach etcd the same way (the
same channel options, and any transport security added later), so both are
built here.
"""

from __future__ import annotations

from typing import Any, Final

import aetcd
import grpc

CHANNEL_OPTIONS: Final[dict[str, Any]] = {
    # Each session gets its own TCP connection: gRPC would otherwise hand a new
    # channel the shared subchannel that is still in reconnect backoff from the
    # previous outage, delaying recovery by up to its backoff (minutes).
    "grpc.use_local_subchannel_pool": 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2000,
}


def make_client(host: str, port: int, timeout: float) -> aetcd.Client:
    """An asyncio etcd client for the calling thread's event loop."""
    # aetcd's annotation says int; it passes the value to gRPC, which takes
    # fractional seconds.
    return aetcd.Client(host, port, timeout=timeout,  # type: ignore[arg-type,unused-ignore]
                        options=dict(CHANNEL_OPTIONS))


def make_channel(host: str, port: int) -> grpc.Channel:
    """A synchronous gRPC channel to etcd (no event loop involved)."""
    target = f"[{host}]" if ":" in host else host
    return grpc.insecure_channel(f"{target}:{port}", options=list(CHANNEL_OPTIONS.items()))
