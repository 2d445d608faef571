#!/usr/bin/env python3
"""Background-submit throughput of the durable queue, against its alternatives.

Measures acknowledged SUBMIT_JOB_BG per second and the submit latency (write of
the request to JOB_CREATED) with ``--conns`` connections each keeping
``--inflight`` submits in flight, no worker attached, for:

* ``gm-sqlite``         gearmesh --queue sqlite (default --fsync batch)
* ``gm-sqlite-always``  gearmesh --queue sqlite --fsync always
* ``gm-memory``         gearmesh --queue memory
* ``gd-sqlite``         gearmand 1.1.20 -q libsqlite3 --libsqlite3-db FILE
* ``gd-memory``         gearmand 1.1.20, default in-memory queue

Runs are interleaved (every target once, then every target again, the order
rotated each round), each on a freshly started server with an empty queue;
the summary gives medians over the rounds and the ratios the durable queue is
judged by. Before each run it waits (at most ``--max-wait`` seconds) until the
machine's CPUs are ``--min-idle`` percent idle, since other work on a small
machine moves the figures a lot. This is a measurement, not a test: it never
fails on a figure.

    .venv/bin/python benchmarks/durability.py                 # everything, 3 rounds
    .venv/bin/python benchmarks/durability.py --targets gm-sqlite,gm-memory --rounds 1
    .venv/bin/python benchmarks/durability.py --profile       # + py-spy on gm-sqlite

``--profile`` needs py-spy (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from node.protocol import (
    ECHO_REQ,
    ECHO_RES,
    HEADER,
    HEADER_SIZE,
    JOB_CREATED,
    REQ,
    SUBMIT_JOB_BG,
    packet,
    request,
)

REPO = Path(__file__).resolve().parents[1]
GEARMAND = "/usr/sbin/gearmand"
TICKS = os.sysconf("SC_CLK_TCK")

TARGETS = ("gm-sqlite", "gm-sqlite-always", "gm-memory", "gd-sqlite", "gd-memory")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_argv(target: str, port: int, workdir: Path) -> list[str]:
    if target.startswith("gm-"):
        argv = [sys.executable, "-m", "gearmesh", "serve", "-L", "127.0.0.1", "-p", str(port),
                "--http-port", "0", "--data-dir", str(workdir / "data")]
        if target == "gm-memory":
            return [*argv, "--queue", "memory"]
        argv += ["--queue", "sqlite"]
        if target == "gm-sqlite-always":
            argv += ["--fsync", "always"]
        return argv
    argv = [GEARMAND, "-L", "127.0.0.1", "-p", str(port), "-l", "stderr",
            "-P", str(workdir / "gearmand.pid")]
    if target == "gd-sqlite":
        argv += ["-q", "libsqlite3", "--libsqlite3-db", str(workdir / "gearmand.sqlite3")]
    return argv


def echo_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(request(ECHO_REQ, b"hi"))
            want = packet(ECHO_RES, b"hi")
            got = b""
            while len(got) < len(want):
                chunk = s.recv(64)
                if not chunk:
                    return False
                got += chunk
            return got == want
    except OSError:
        return False


class Server:
    def __init__(self, target: str, root: Path) -> None:
        self.target = target
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{target}-", dir=root))
        self.port = free_port()
        self.argv = server_argv(target, self.port, self.workdir)
        self.log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=REPO,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not echo_ok(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (self.workdir / "server.log").read_text(errors="replace")
                raise RuntimeError(f"{target} did not start: {' '.join(self.argv)}\n{log}")
            time.sleep(0.05)  # start-up polling only

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- the load: a pipelined background submitter ------------------------------------


class Window:
    """The measurement: replies received between ``start`` and ``end``."""

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end
        self.acked = 0
        self.errors = 0
        self.latencies: list[float] = []


class BgSubmitter(asyncio.Protocol):
    """Keeps ``inflight`` SUBMIT_JOB_BG on one connection until ``stop_at``."""

    def __init__(self, conn_no: int, func: bytes, payload_size: int, inflight: int,
                 stop_at: float, window: Window, done: asyncio.Future[None]) -> None:
        self.prefix = func + b"\0\0"
        self.conn_no = conn_no
        self.payload_size = payload_size
        self.inflight = inflight
        self.stop_at = stop_at
        self.window = window
        self.done = done
        self.sent_at: collections.deque[float] = collections.deque()
        self.seq = 0
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.total_acked = 0
        self.total_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fill(time.perf_counter())

    def fill(self, now: float) -> None:
        if now >= self.stop_at:
            if not self.sent_at and not self.done.done():
                self.done.set_result(None)
            return
        want = self.inflight - len(self.sent_at)
        if want <= 0:
            return
        out = []
        for _ in range(want):
            self.seq += 1
            data = b"%02d-%010d-" % (self.conn_no, self.seq)
            data = data.ljust(self.payload_size, b"x")
            payload = self.prefix + data
            out.append(HEADER.pack(REQ, SUBMIT_JOB_BG, len(payload)) + payload)
            self.sent_at.append(now)
        assert self.transport is not None
        self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf
        buf += data
        w = self.window
        pos = 0
        n = len(buf)
        while n - pos >= HEADER_SIZE:
            _, ptype, size = HEADER.unpack_from(buf, pos)
            if n - pos < HEADER_SIZE + size:
                break
            pos += HEADER_SIZE + size
            sent = self.sent_at.popleft()
            ok = ptype == JOB_CREATED
            if ok:
                self.total_acked += 1
            else:
                self.total_errors += 1
            if w.start <= now < w.end:
                if ok:
                    w.acked += 1
                    w.latencies.append(now - sent)
                else:
                    w.errors += 1
        del buf[:pos]
        self.fill(now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"server closed the connection: {exc}"))


def _same(proto: BgSubmitter) -> BgSubmitter:
    return proto


async def bg_load(port: int, conns: int, inflight: int, payload_size: int, warmup: float,
                  seconds: float, func: bytes) -> tuple[Window, int, int]:
    loop = asyncio.get_running_loop()
    begin = time.perf_counter()
    window = Window(begin + warmup, begin + warmup + seconds)
    protos: list[BgSubmitter] = []
    transports = []
    for i in range(conns):
        done: asyncio.Future[None] = loop.create_future()
        proto = BgSubmitter(i, func, payload_size, inflight, window.end, window, done)
        t, p = await loop.create_connection(partial(_same, proto), "127.0.0.1", port)
        protos.append(p)
        transports.append(t)
    # Slow servers may take a while to answer what is still in flight at the end.
    await asyncio.wait_for(asyncio.gather(*(p.done for p in protos)), timeout=seconds + 120)
    for t in transports:
        t.close()
    return window, sum(p.total_acked for p in protos), sum(p.total_errors for p in protos)


# -- runs and the report ----------------------------------------------------------


@dataclass
class Run:
    target: str
    round: int
    submits_per_s: float
    p50_ms: float
    p99_ms: float
    acked_in_window: int
    errors: int
    acked_total: int
    server_cpu_pct: float  # of one core, during the whole run
    client_cpu_pct: float
    argv: list[str] = field(default_factory=list)
    idle_before: float = -1.0  # machine CPU idle % just before the run (-1: not measured)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def py_spy() -> str | None:
    """py-spy from the running interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def one_run(target: str, rnd: int, args: argparse.Namespace, root: Path,
            profile_out: Path | None = None) -> Run:
    server = Server(target, root)
    spy: subprocess.Popen[bytes] | None = None
    try:
        if profile_out is not None:
            spy = subprocess.Popen(
                [py_spy() or "py-spy", "record", "--pid", str(server.proc.pid), "--threads",
                 "--rate", "250", "--duration", str(int(args.warmup + args.seconds)),
                 "--format", "raw", "--output", str(profile_out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cpu0 = server.cpu_seconds()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        loop = new_loop()
        try:
            window, acked_total, errors_total = loop.run_until_complete(bg_load(
                server.port, args.conns, args.inflight, args.payload_size, args.warmup,
                args.seconds, f"bench-{target}".encode()))
        finally:
            loop.close()
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu1 = server.cpu_seconds()
        if spy is not None:
            _, err = spy.communicate(timeout=120)
            if spy.returncode != 0:
                print(f"py-spy failed: {err.decode(errors='replace')}", file=sys.stderr)
    finally:
        server.stop()
    lat = sorted(window.latencies)
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return Run(target=target, round=rnd, submits_per_s=window.acked / args.seconds,
               p50_ms=percentile(lat, 0.50) * 1000, p99_ms=percentile(lat, 0.99) * 1000,
               acked_in_window=window.acked, errors=errors_total, acked_total=acked_total,
               server_cpu_pct=100 * (cpu1 - cpu0) / wall,
               client_cpu_pct=100 * client_cpu / wall, argv=server.argv)


def summarize(runs: list[Run], targets: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for t in targets:
        rs = [r for r in runs if r.target == t]
        if rs:
            out[t] = {
                "submits_per_s": statistics.median(r.submits_per_s for r in rs),
                "p50_ms": statistics.median(r.p50_ms for r in rs),
                "p99_ms": statistics.median(r.p99_ms for r in rs),
                "errors": max(r.errors for r in rs),
                "server_cpu_pct": statistics.median(r.server_cpu_pct for r in rs),
                "client_cpu_pct": statistics.median(r.client_cpu_pct for r in rs),
            }
    return out


def ratio(summary: dict[str, dict[str, float]], a: str, b: str) -> float | None:
    if a in summary and b in summary and summary[b]["submits_per_s"] > 0:
        return summary[a]["submits_per_s"] / summary[b]["submits_per_s"]
    return None


def report(summary: dict[str, dict[str, float]], args: argparse.Namespace) -> dict[str, object]:
    print(f"\nmedians of {args.rounds} interleaved round(s); {args.conns} connections x "
          f"{args.inflight} in flight, {args.payload_size}-byte payloads, "
          f"{args.seconds:g} s measured after {args.warmup:g} s warm-up; cpus={os.cpu_count()}")
    print(f"{'target':<18}{'submits/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"
          f"{'server cpu':>12}{'client cpu':>12}")
    for t, s in summary.items():
        print(f"{t:<18}{s['submits_per_s']:>12,.0f}{s['p50_ms']:>10.2f}{s['p99_ms']:>10.2f}"
              f"{s['errors']:>8.0f}{s['server_cpu_pct']:>11.0f}%{s['client_cpu_pct']:>11.0f}%")
    ratios = {
        "gm-sqlite / gm-memory": ratio(summary, "gm-sqlite", "gm-memory"),
        "gm-sqlite-always / gm-memory": ratio(summary, "gm-sqlite-always", "gm-memory"),
        "gm-sqlite / gd-sqlite": ratio(summary, "gm-sqlite", "gd-sqlite"),
        "gm-sqlite-always / gd-sqlite": ratio(summary, "gm-sqlite-always", "gd-sqlite"),
        "gm-memory / gd-memory": ratio(summary, "gm-memory", "gd-memory"),
        "gm-sqlite / gd-memory": ratio(summary, "gm-sqlite", "gd-memory"),
    }
    print("\nratios (submits/s)")
    for name, value in ratios.items():
        if value is not None:
            print(f"  {name:<30}{value:>10.2f}x")
    targets: dict[str, object] = {}
    durable = summary.get("gm-sqlite")
    if durable is not None:
        r_mem = ratios["gm-sqlite / gm-memory"]
        r_gd = ratios["gm-sqlite / gd-sqlite"]
        targets = {
            "durable >= 0.5x own memory rate": None if r_mem is None else r_mem >= 0.5,
            "durable >= 50x gearmand libsqlite3": None if r_gd is None else r_gd >= 50,
            "durable p99 submit latency < 50 ms": durable["p99_ms"] < 50,
        }
        print("\nissue targets (gm-sqlite, default --fsync batch)")
        for name, ok in targets.items():
            word = "n/a" if ok is None else ("met" if ok else "NOT met")
            print(f"  {name:<40}{word}")
    return {"ratios": ratios, "targets": targets}


def top_frames(raw: Path, limit: int = 15) -> None:
    """Self and inclusive sample counts per frame from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[frames[0]] += n
        own[frames[-1]] += n
        for f in set(frames[1:]):
            incl[f] += n
    if not total:
        print("py-spy recorded no samples")
        return
    print(f"\npy-spy: {total} samples of the gm-sqlite server's threads (py-spy drops idle ones)")
    print("by thread:")
    for name, n in threads.most_common(6):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("top frames by own samples:")
    for name, n in own.most_common(limit):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("top frames by inclusive samples:")
    for name, n in incl.most_common(limit):
        print(f"  {100 * n / total:5.1f}%  {name}")


def cpu_idle(interval: float = 0.5) -> float:
    """Percentage of CPU time the whole machine spent idle over ``interval``."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(interval)
    idle1, total1 = sample()
    return 100.0 * (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(min_idle: float, max_wait: float) -> float:
    """Other work on a 2-core machine moves these figures by a factor of
    several: wait (bounded) until the CPUs are mostly idle. Returns the idle
    percentage last seen."""
    deadline = time.monotonic() + max_wait
    idle = cpu_idle()
    while idle < min_idle and time.monotonic() < deadline:
        idle = cpu_idle()
    return idle


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated subset of {', '.join(TARGETS)}")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--inflight", type=int, default=16, help="submits in flight per connection")
    p.add_argument("--payload-size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0, help="measured part of each run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured start of each run")
    p.add_argument("--min-idle", type=float, default=90.0,
                   help="before each run, wait until the CPUs are this %% idle (0: don't)")
    p.add_argument("--max-wait", type=float, default=120.0,
                   help="longest wait for --min-idle, in seconds; then run anyway")
    p.add_argument("--json", type=Path, help="also write every run and the summary here")
    p.add_argument("--profile", action="store_true",
                   help="one more gm-sqlite run under py-spy; print its top frames")
    args = p.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}")
    if any(t.startswith("gd-") for t in targets) and not os.access(GEARMAND, os.X_OK):
        p.error(f"{GEARMAND} not found (apt-get install gearman-job-server) ")

    root = Path(tempfile.mkdtemp(prefix="gearmesh-bench-durability-"))
    runs: list[Run] = []
    # Other processes on the machine skew every figure; say how busy it was.
    print(f"load average before: {loadavg()}", flush=True)
    try:
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for target in order:
                idle = wait_for_quiet(args.min_idle, args.max_wait) if args.min_idle else -1
                r = one_run(target, rnd, args, root)
                r.idle_before = idle
                runs.append(r)
                print(f"round {rnd + 1} {target:<18}{r.submits_per_s:>10,.0f}/s  "
                      f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  errors {r.errors}  "
                      f"server cpu {r.server_cpu_pct:3.0f}%  client cpu "
                      f"{r.client_cpu_pct:3.0f}%  idle before {idle:3.0f}%", flush=True)
        print(f"load average after: {loadavg()}", flush=True)
        summary = summarize(runs, targets)
        verdict = report(summary, args)
        if args.profile:
            if py_spy() is None:
                print("--profile: py-spy not found (pip install py-spy)", file=sys.stderr)
            else:
                raw = root / "profile.txt"
                if args.min_idle:
                    wait_for_quiet(args.min_idle, args.max_wait)
                r = one_run("gm-sqlite", -1, args, root, profile_out=raw)
                print(f"\nprofiled gm-sqlite run: {r.submits_per_s:,.0f}/s "
                      f"(py-spy slows the server down)")
                if raw.exists():
                    top_frames(raw)
        if args.json:
            args.json.write_text(json.dumps({
                "config": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
                "runs": [asdict(r) for r in runs], "summary": summary, **verdict}, indent=2))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
