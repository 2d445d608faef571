"""A do-nothing Gearman endpoint for measuring the load generator itself.

It acknowledges every submit with JOB_CREATED and stores nothing, answers
foreground submits at once with WORK_COMPLETE carrying the data back (acting
as its own instant worker), ECHO_REQ with ECHO_RES, any grab with NO_JOB, and
the admin `status` with an empty list. Against it, `gearmesh bench bg` shows
how many submits per second the generator can produce on this machine, which
is the ceiling of what it can measure.

`--corrupt` flips the first byte of every WORK_COMPLETE payload, so the
generator's echo check can be seen to fail. `--procs N` runs N accepting
processes on one port (SO_REUSEPORT).

    python -m gearmesh.bench.nullserver --port 4799 --procs 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import socket
import sys
from collections.abc import Callable

from node import protocol as P

_HEADER = P.HEADER
_RES = P.RES
_NO_JOB = P.NO_JOB_PACKET
_BG_SUBMITS = (P.SUBMIT_JOB_BG, P.SUBMIT_JOB_HIGH_BG, P.SUBMIT_JOB_LOW_BG)
_FG_SUBMITS = (P.SUBMIT_JOB, P.SUBMIT_JOB_HIGH, P.SUBMIT_JOB_LOW)
_GRABS = (P.GRAB_JOB, P.GRAB_JOB_UNIQ, P.GRAB_JOB_ALL)
_HS = P.HEADER_SIZE


class NullProtocol(asyncio.Protocol):
    def __init__(self, corrupt: bool) -> None:
        self.corrupt = corrupt
        self.transport: asyncio.Transport | None = None
        self.rest = b""
        self.counter = 0
        self.prefix = b"H:null%d:" % os.getpid()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
        out: list[bytes] = []
        pos, end = 0, len(data)
        unpack = _HEADER.unpack_from
        while pos < end:
            if data[pos] != 0:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    break
                out.append(self._admin(data[pos:nl].strip()))
                pos = nl + 1
                continue
            if end - pos < _HS:
                break
            _, ptype, size = unpack(data, pos)
            stop = pos + _HS + size
            if stop > end:
                break
            body = data[pos + _HS:stop]
            pos = stop
            if ptype in _BG_SUBMITS:
                self.counter += 1
                handle = self.prefix + b"%d" % self.counter
                out.append(_HEADER.pack(_RES, P.JOB_CREATED, len(handle)) + handle)
            elif ptype in _FG_SUBMITS:
                self.counter += 1
                handle = self.prefix + b"%d" % self.counter
                job = body.split(b"\0", 2)[2] if body.count(b"\0") >= 2 else b""
                if self.corrupt and job:
                    job = bytes([job[0] ^ 0xFF]) + job[1:]
                out.append(_HEADER.pack(_RES, P.JOB_CREATED, len(handle)) + handle)
                out.append(_HEADER.pack(_RES, P.WORK_COMPLETE, len(handle) + 1 + len(job))
                           + handle + b"\0" + job)
            elif ptype == P.ECHO_REQ:
                out.append(_HEADER.pack(_RES, P.ECHO_RES, len(body)) + body)
            elif ptype in _GRABS:
                out.append(_NO_JOB)
            # CAN_DO, PRE_SLEEP, WORK_* and the rest need no reply here.
        self.rest = data[pos:] if pos < end else b""
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _admin(self, line: bytes) -> bytes:
        word = line.split(b" ", 1)[0].lower()
        if word == b"version":
            return b"OK nullserver\n"
        if word == b"getpid":
            return b"OK %d\n" % os.getpid()
        if word in (b"status", b"workers", b"prioritystatus"):
            return b".\n"
        return b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"


def _serve(host: str, port: int, corrupt: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop  # optional speed-up

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass

    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        server = await asyncio.get_running_loop().create_server(
            lambda: NullProtocol(corrupt), sock=sock)
        async with server:
            await server.serve_forever()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gearmesh.bench.nullserver",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--corrupt", action="store_true",
                        help="flip the first byte of every WORK_COMPLETE payload")
    args = parser.parse_args(argv)
    if args.procs <= 1:
        _serve(args.host, args.port, args.corrupt)
        return 0
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_serve, args=(args.host, args.port, args.corrupt))
             for _ in range(args.procs)]
    for p in procs:
        p.start()

    def stop(_sig: int, _frame: object) -> None:
        for p in procs:
            if p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
