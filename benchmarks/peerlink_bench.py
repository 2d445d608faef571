"""Peer-link micro-benchmark: frames per second between two processes.

    .venv/bin/python benchmarks/peerlink_bench.py [--frames 1000000] [--payload 64]

Starts a receiver process, then measures from this (sender) process:

1. idle round trip: one frame there, one back, repeated — the latency a lone
   job sees on an idle link (adaptive batching must add nothing here);
2. one-way throughput: N frames sent as fast as the link takes them, timed
   from the first send until the receiver has unpacked the last one (wall
   clock, both processes on one host), with the histogram of the batch
   sizes that the adaptive flusher chose;
3. echo throughput: N frames there and each one echoed back, the shape of
   forwarded jobs and their results.

Both processes use uvloop when it is installed (``--no-uvloop`` to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import msgpack

from cluster.peerlink import PeerLinks, PeerLinkServer

# Producer backpressure: stop queueing above this many unsent bytes, as a node
# would stop reading its client sockets.
HIGH_WATER = 8 << 20


def use_uvloop(enabled: bool) -> str:
    if enabled:
        try:
            import uvloop

            uvloop.install()
            return "uvloop"
        except ImportError:
            pass
    return "asyncio"


# -- receiver ---------------------------------------------------------------


async def receiver(port: int, reply_address: str) -> None:
    links = PeerLinks("rx")
    server = PeerLinkServer(links, "127.0.0.1", port)
    expected = 0
    count = 0
    sizes: collections.Counter[int] = collections.Counter()

    def on_frames(from_node: str, epoch: int, frames: list[Any]) -> None:
        nonlocal expected, count
        kind = frames[0][0]
        if kind == "data" or kind == "echo":
            sizes[len(frames)] += 1
            count += len(frames)
            if kind == "echo":
                for f in frames:
                    links.send("tx", f)
            if count >= expected:
                links.send("tx", ["done", count, time.time(), dict(sizes)])
        elif kind == "start":
            expected, count = frames[0][1], 0
            sizes.clear()
            links.send("tx", ["ready"])
        elif kind == "ping":
            links.send("tx", ["pong", frames[0][1]])

    links.on_frames(on_frames)
    bound = await server.start()
    print(f"LISTENING {bound}", flush=True)
    links.connect("tx", reply_address)
    await asyncio.Event().wait()


# -- sender -----------------------------------------------------------------


class Sender:
    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.links = PeerLinks("tx")
        self.server = PeerLinkServer(self.links, "127.0.0.1", 0)
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.echoes = 0
        self.echo_target = 0
        self.echo_done = asyncio.Event()
        self.links.on_frames(self._on_frames)

    def _on_frames(self, from_node: str, epoch: int, frames: list[Any]) -> None:
        if frames[0][0] == "echo":
            self.echoes += len(frames)
            if self.echoes >= self.echo_target:
                self.echo_done.set()
            return
        for f in frames:
            self.inbox.put_nowait(f)

    async def expect(self, kind: str) -> Any:
        while True:
            frame = await asyncio.wait_for(self.inbox.get(), 120)
            if frame[0] == kind:
                return frame

    async def pump(self, kind: str, n: int, payload: bytes) -> None:
        send = self.links.send
        links = self.links
        chunk = self.chunk
        for i in range(n):
            send("rx", [kind, i, f"H:tx:{i}", payload])
            if i % chunk == 0:
                await asyncio.sleep(0)
                while links.buffered_bytes("rx") > HIGH_WATER:
                    await asyncio.sleep(0.0005)

    async def round_trips(self, count: int) -> list[float]:
        rtts = []
        for i in range(count):
            t0 = time.perf_counter()
            self.links.send("rx", ["ping", i])
            await self.expect("pong")
            rtts.append(time.perf_counter() - t0)
        return rtts

    async def one_way(self, n: int, payload: bytes) -> tuple[float, dict[int, int]]:
        """Seconds until the receiver had all ``n`` frames, and its histogram
        of received batch sizes (frames per batch → batches)."""
        self.links.send("rx", ["start", n])
        await self.expect("ready")
        t0 = time.time()
        await self.pump("data", n, payload)
        done = await self.expect("done")
        return done[2] - t0, done[3]

    async def echo(self, n: int, payload: bytes) -> float:
        self.links.send("rx", ["start", n])
        await self.expect("ready")
        self.echoes, self.echo_target = 0, n
        self.echo_done.clear()
        t0 = time.perf_counter()
        await self.pump("echo", n, payload)
        await asyncio.wait_for(self.echo_done.wait(), 300)
        return time.perf_counter() - t0


def histogram(sizes: dict[int, int]) -> str:
    buckets: collections.Counter[int] = collections.Counter()
    for size, count in sizes.items():
        buckets[1 << max(int(size) - 1, 0).bit_length()] += count
    total = sum(buckets.values())
    lines = []
    lo = 1
    for hi in sorted(buckets):
        share = buckets[hi] / total
        label = f"{lo}" if lo == hi else f"{lo}-{hi}"
        lines.append(f"    {label:>12} frames/batch: {buckets[hi]:7d} batches "
                     f"{share:6.1%} {'#' * max(1, round(share * 40))}")
        lo = hi + 1
    return "\n".join(lines)


async def sender(args: argparse.Namespace, loop_name: str) -> None:
    tx = Sender(args.chunk)
    port = await tx.server.start()
    argv = [sys.executable, __file__, "--role", "receiver", "--reply", f"127.0.0.1:{port}"]
    if not args.uvloop:
        argv.append("--no-uvloop")
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = await asyncio.to_thread(child.stdout.readline)
        rx_port = int(line.split()[1])
        tx.links.connect("rx", f"127.0.0.1:{rx_port}")
        payload = os.urandom(args.payload)
        frame_bytes = len(msgpack.packb(["data", 0, "H:tx:0", payload]))

        print(f"peer link benchmark: {loop_name}, {os.cpu_count()} CPU(s), load average "
              f"{os.getloadavg()[0]:.1f}, frame ~{frame_bytes} bytes (payload {args.payload}), "
              f"producer yields every {args.chunk} frames")
        await tx.round_trips(200)  # warm-up, also waits for the link
        rtts = await tx.round_trips(args.pings)
        rtts_us = sorted(r * 1e6 for r in rtts)
        print(f"  idle round trip ({args.pings} ping-pongs): "
              f"p50 {statistics.median(rtts_us):.0f} us, "
              f"p99 {rtts_us[int(len(rtts_us) * 0.99) - 1]:.0f} us")

        for run in range(args.runs):
            elapsed, recv_hist = await tx.one_way(args.frames, payload)
            batches = sum(recv_hist.values())
            print(f"  one-way run {run + 1}: {args.frames} frames in {elapsed:.2f}s = "
                  f"{args.frames / elapsed:,.0f} frames/s, "
                  f"{args.frames * frame_bytes / elapsed / 1e6:.0f} MB/s, "
                  f"{batches} batches (mean {args.frames / batches:.0f} frames/batch)")
        print("  batch sizes of the last one-way run (as received):")
        print(histogram(recv_hist))

        n_echo = args.frames // 2
        elapsed = await tx.echo(n_echo, payload)
        print(f"  echo: {n_echo} frames there and back in {elapsed:.2f}s = "
              f"{n_echo / elapsed:,.0f} round trips/s")
    finally:
        child.kill()
        child.wait()
        await tx.links.close()
        await tx.server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--payload", type=int, default=64, help="bytes of payload per frame")
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=512,
                        help="frames the producer queues between yields to the event loop "
                        "(a node queues what one pass over its sockets produced)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-uvloop", dest="uvloop", action="store_false")
    parser.add_argument("--role", choices=("sender", "receiver"), default="sender")
    parser.add_argument("--reply", default="")
    args = parser.parse_args()
    loop_name = use_uvloop(args.uvloop)
    if args.role == "receiver":
        asyncio.run(receiver(0, args.reply))
    else:
        asyncio.run(sender(args, loop_name))


if __name__ == "__main__":
    main()
