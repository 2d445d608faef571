#!/usr/bin/env python3
"""What one message costs on a gRPC bidirectional stream, per Python gRPC stack.

    .venv/bin/python benchmarks/grpc_cost.py [--pingers 16] [--round-trips 20000]
        [--sizes 40,4096,65536] [--kinds grpcio,grpclib,tcp]

A server process echoes every message it reads on one bidi stream; this
process keeps ``--pingers`` round trips in flight, one message each way per
round trip (no batching: that is the point), and reports round trips per
second and the CPU time both processes spent per round trip, for each
message size. Stacks: ``grpcio`` (grpc.aio, C core with its own poller
thread), ``grpclib`` (HTTP/2 in Python on the event loop, with a raw-bytes
codec as the peer link uses), and a plain asyncio TCP connection with
length-prefixed messages, the floor a message could cost in Python. Both
sides use uvloop when it is installed, as the nodes do.

Why it matters: the peer link batches frames, but a job that crosses nodes
at low concurrency travels in messages of one or two frames, so the cluster's
cross-node round trips are bound by this per-message cost (see
benchmarks/README.md, "Cross-node round trips").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import struct
import subprocess
import sys
import time
from typing import Any

import grpc
from grpclib.client import Channel as GrpclibChannel
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
from grpclib.server import Server as GrpclibServer

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Link"
LENGTH = struct.Struct(">I")
_KEY = 16  # every message starts with its round trip's key, padded to this


def _ident(b: bytes) -> bytes:
    return b


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


# -- servers (run in a child process) ------------------------------------------


async def _grpc_server(port: int) -> None:
    async def link(requests: Any, context: Any) -> Any:
        async for msg in requests:
            yield msg

    handler = grpc.stream_stream_rpc_method_handler(
        link, request_deserializer=_ident, response_serializer=_ident)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"Link": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


class _RawCodec(CodecBase):
    """Messages are bytes already (the peer link's codec does the same)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


class _GrpclibEcho:
    async def link(self, stream: Any) -> None:
        while (msg := await stream.recv_message()) is not None:
            await stream.send_message(msg)

    def __mapping__(self) -> dict[str, Handler]:
        return {METHOD: Handler(self.link, Cardinality.STREAM_STREAM, bytes, bytes)}


async def _grpclib_server(port: int) -> None:
    server = GrpclibServer([_GrpclibEcho()], codec=_RawCodec())
    await server.start("127.0.0.1", port)
    print("ready", flush=True)
    await server.wait_closed()


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # length-prefixed messages echo byte for byte


async def _tcp_server(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_EchoProtocol, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


# -- clients -------------------------------------------------------------------


async def _grpc_client(port: int, pingers: int, total: int,
                       size: int) -> tuple[float, float]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.stream_stream(METHOD, request_serializer=_ident,
                                 response_deserializer=_ident)()
    waiting: dict[bytes, asyncio.Future[None]] = {}
    outbox: asyncio.Queue[bytes] = asyncio.Queue()

    async def reader() -> None:
        while (msg := await call.read()) is not grpc.aio.EOF:
            waiting.pop(msg[:_KEY]).set_result(None)

    async def writer() -> None:
        # One writer: a stream takes one write at a time.
        while True:
            await call.write(await outbox.get())

    tasks = [asyncio.create_task(reader()), asyncio.create_task(writer())]
    elapsed, cpu = await _drive(pingers, total, size, waiting, outbox.put_nowait)
    for t in tasks:
        t.cancel()
    await channel.close()
    return elapsed, cpu


async def _grpclib_client(port: int, pingers: int, total: int,
                          size: int) -> tuple[float, float]:
    channel = GrpclibChannel("127.0.0.1", port, codec=_RawCodec())
    waiting: dict[bytes, asyncio.Future[None]] = {}
    outbox: asyncio.Queue[bytes] = asyncio.Queue()
    async with channel.request(METHOD, Cardinality.STREAM_STREAM, bytes, bytes) as stream:
        await stream.send_request()

        async def reader() -> None:
            while (msg := await stream.recv_message()) is not None:
                waiting.pop(msg[:_KEY]).set_result(None)

        async def writer() -> None:
            while True:
                await stream.send_message(await outbox.get())

        tasks = [asyncio.create_task(reader()), asyncio.create_task(writer())]
        elapsed, cpu = await _drive(pingers, total, size, waiting, outbox.put_nowait)
        for t in tasks:
            t.cancel()
        await stream.cancel()
    channel.close()
    return elapsed, cpu


async def _tcp_client(port: int, pingers: int, total: int,
                      size: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    waiting: dict[bytes, asyncio.Future[None]] = {}
    buf = bytearray()

    class Client(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            buf.extend(data)
            while len(buf) >= 4:
                (n,) = LENGTH.unpack_from(buf)
                if len(buf) < 4 + n:
                    return
                key = bytes(buf[4:4 + _KEY])
                del buf[:4 + n]
                waiting.pop(key).set_result(None)

    transport, _ = await loop.create_connection(Client, "127.0.0.1", port)
    elapsed, cpu = await _drive(pingers, total, size, waiting,
                                lambda m: transport.write(LENGTH.pack(len(m)) + m))
    transport.close()
    return elapsed, cpu


async def _drive(pingers: int, total: int, size: int,
                 waiting: dict[bytes, asyncio.Future[None]], send: Any) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    done = 0
    filler = b"x" * max(size - _KEY, 0)

    async def pinger(i: int) -> None:
        nonlocal done
        k = 0
        while done < total:
            key = (b"%d:%d" % (i, k)).ljust(_KEY, b".")
            k += 1
            fut: asyncio.Future[None] = loop.create_future()
            waiting[key] = fut
            send(key + filler)
            await fut
            done += 1

    c0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(pinger(i) for i in range(pingers)))
    return time.perf_counter() - t0, _cpu() - c0


_SERVERS: dict[str, Any] = {"grpcio": _grpc_server, "grpclib": _grpclib_server,
                            "tcp": _tcp_server}
_CLIENTS: dict[str, Any] = {"grpcio": _grpc_client, "grpclib": _grpclib_client,
                            "tcp": _tcp_client}


def _measure(kind: str, pingers: int, total: int, size: int) -> float:
    port = _free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit(f"{kind} server did not start")
        server_cpu0 = _child_cpu(child.pid)
        elapsed, client_cpu = asyncio.run(_CLIENTS[kind](port, pingers, total, size))
        server_cpu = _child_cpu(child.pid) - server_cpu0
    finally:
        child.kill()
        child.wait()
    per_rt = (client_cpu + server_cpu) / total * 1e6
    print(f"{kind:7} {size:>6} B {total / elapsed:>9,.0f} round trips/s   CPU per round trip: "
          f"client {client_cpu / total * 1e6:5.0f} us, server {server_cpu / total * 1e6:5.0f} us"
          f"   = {per_rt / 4:4.0f} us per message and side", flush=True)
    return per_rt / 4


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pingers", type=int, default=16, help="round trips kept in flight")
    ap.add_argument("--round-trips", type=int, default=20000)
    ap.add_argument("--sizes", default="40,4096,65536", help="message sizes in bytes")
    ap.add_argument("--kinds", default="grpcio,grpclib,tcp", help="stacks to measure")
    ap.add_argument("--reps", type=int, default=1, help="repetitions, interleaved")
    ap.add_argument("--serve", choices=tuple(_SERVERS), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _install_uvloop()
    if args.serve:
        asyncio.run(_SERVERS[args.serve](args.port))
        return
    import grpclib
    print(f"{args.pingers} round trips in flight, one message each way, "
          f"{os.cpu_count()} CPU(s), grpcio {grpc.__version__}, grpclib {grpclib.__version__}")
    kinds = args.kinds.split(",")
    sizes = [int(x) for x in args.sizes.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.reps):
        for size in sizes:
            # Big messages take longer: fewer of them keep each run short.
            n = max(args.round_trips * 4096 // max(size, 4096), 1000)
            for kind in kinds:
                results.setdefault((kind, size), []).append(
                    _measure(kind, args.pingers, n, size))
    print("\nmedian CPU per message and side (us):")
    print("| size | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for size in sizes:
        cells = [f"{sorted(results[(k, size)])[len(results[(k, size)]) // 2]:.0f}"
                 for k in kinds]
        print(f"| {size} B | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
