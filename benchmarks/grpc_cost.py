#!/usr/bin/env python3
"""What one small message costs on a grpc.aio bidirectional stream.

    .venv/bin/python benchmarks/grpc_cost.py [--pingers 16] [--round-trips 40000]

A server process echoes every message it reads on one bidi stream; this
process keeps ``--pingers`` round trips in flight, one small message each
way per round trip (no batching: that is the point), and reports round trips
per second and the CPU time both processes spent per round trip. The same
is then done over a plain asyncio TCP connection with length-prefixed
messages, as the floor a message could cost in Python. Both sides use
uvloop when it is installed, as the nodes do.

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

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Link"
LENGTH = struct.Struct(">I")


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


async def _grpc_client(port: int, pingers: int, total: int) -> tuple[float, float]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.stream_stream(METHOD, request_serializer=_ident,
                                 response_deserializer=_ident)()
    waiting: dict[bytes, asyncio.Future[None]] = {}
    outbox: asyncio.Queue[bytes] = asyncio.Queue()

    async def reader() -> None:
        while (msg := await call.read()) is not grpc.aio.EOF:
            waiting.pop(msg).set_result(None)

    async def writer() -> None:
        # One writer: a stream takes one write at a time.
        while True:
            await call.write(await outbox.get())

    tasks = [asyncio.create_task(reader()), asyncio.create_task(writer())]
    elapsed, cpu = await _drive(pingers, total, waiting, outbox.put_nowait)
    for t in tasks:
        t.cancel()
    await channel.close()
    return elapsed, cpu


async def _tcp_client(port: int, pingers: int, total: int) -> tuple[float, float]:
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
                msg = bytes(buf[4:4 + n])
                del buf[:4 + n]
                waiting.pop(msg).set_result(None)

    transport, _ = await loop.create_connection(Client, "127.0.0.1", port)
    elapsed, cpu = await _drive(pingers, total, waiting,
                                lambda m: transport.write(LENGTH.pack(len(m)) + m))
    transport.close()
    return elapsed, cpu


async def _drive(pingers: int, total: int, waiting: dict[bytes, asyncio.Future[None]],
                 send: Any) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    done = 0

    async def pinger(i: int) -> None:
        nonlocal done
        k = 0
        while done < total:
            key = b"%d:%d" % (i, k)
            k += 1
            fut: asyncio.Future[None] = loop.create_future()
            waiting[key] = fut
            send(key)
            await fut
            done += 1

    c0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(pinger(i) for i in range(pingers)))
    return time.perf_counter() - t0, _cpu() - c0


def _measure(kind: str, pingers: int, total: int) -> None:
    port = _free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit(f"{kind} server did not start")
        server_cpu0 = _child_cpu(child.pid)
        client = _grpc_client if kind == "grpc" else _tcp_client
        elapsed, client_cpu = asyncio.run(client(port, pingers, total))
        server_cpu = _child_cpu(child.pid) - server_cpu0
    finally:
        child.kill()
        child.wait()
    per_rt = (client_cpu + server_cpu) / total * 1e6
    print(f"{kind:5} {total / elapsed:>9,.0f} round trips/s   CPU per round trip: "
          f"client {client_cpu / total * 1e6:5.0f} us, server {server_cpu / total * 1e6:5.0f} us"
          f"   = {per_rt / 4:4.0f} us per message and side")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pingers", type=int, default=16, help="round trips kept in flight")
    ap.add_argument("--round-trips", type=int, default=40000)
    ap.add_argument("--serve", choices=("grpc", "tcp"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _install_uvloop()
    if args.serve:
        asyncio.run(_grpc_server(args.port) if args.serve == "grpc" else _tcp_server(args.port))
        return
    print(f"{args.pingers} round trips in flight, one message each way, "
          f"{os.cpu_count()} CPU(s), grpcio {grpc.__version__}")
    for kind in ("grpc", "tcp"):
        _measure(kind, args.pingers, args.round_trips)


if __name__ == "__main__":
    main()
