"""Runs a scenario across several processes.

The coordinating process (this module's `execute`) starts `procs` children.
Each child runs the scenario's async `child` side on its own event loop and
share of the connections; the coordinator runs the scenario's `parent` side,
which steps the children through numbered phases (a barrier per phase), shows
progress, asks the servers for their counters between phases, and finally
aggregates what the children report.

Timestamps are time.monotonic(): on Linux that is one clock for every process
on the machine, so a start in one child and an end in another can be
subtracted.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from gearmesh.bench.config import Config
from gearmesh.bench.progress import ProgressLine
from gearmesh.bench.wire import FunctionStatus, Server, admin_status

# How often a child copies its counters into shared memory and looks at the
# stop flag; fast enough for a smooth progress line, rare enough to be free.
TICK_S = 0.02


class ChildFailed(Exception):
    pass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Outcome:
    """What a scenario's parent side hands back: machine metrics, the human
    summary rows, and the verification results."""

    metrics: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    extra_text: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))


class Scenario(Protocol):
    cfg: Config

    def procs(self) -> int: ...

    async def child(self, rt: ChildRuntime) -> dict[str, Any]: ...

    def parent(self, ctl: Control) -> Outcome: ...


@dataclass
class Shared:
    progress: Any  # RawArray('q'): per-child count of the current phase
    phase: Any  # RawArray('i'): last phase each child reached
    stop: Any  # RawValue('i'): phases up to this number must stop
    barrier: Any  # Barrier(procs + 1)


class ChildRuntime:
    def __init__(self, cfg: Config, index: int, procs: int, shared: Shared) -> None:
        self.cfg = cfg
        self.index = index
        self.procs = procs
        self.shared = shared
        self.phase = 0
        self._counter: Callable[[], int] = lambda: 0
        self._ticker: asyncio.Task[None] | None = None

    def mine(self, n: int) -> list[int]:
        """Global numbers, out of n, of the connections this process runs."""
        return list(range(self.index, n, self.procs))

    def block(self, n: int) -> tuple[int, int]:
        """This process's contiguous share [lo, hi) of n jobs."""
        return n * self.index // self.procs, n * (self.index + 1) // self.procs

    def count_with(self, counter: Callable[[], int]) -> None:
        """Report counter() as this child's progress from now on."""
        self._counter = counter
        self.shared.progress[self.index] = counter()
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            self.shared.progress[self.index] = self._counter()
            await asyncio.sleep(TICK_S)

    def stopped(self, level: int) -> bool:
        return bool(self.shared.stop.value >= level)

    async def wait_stop(self, level: int) -> None:
        while self.shared.stop.value < level:
            await asyncio.sleep(TICK_S)

    async def sync(self) -> float:
        """Reach the next phase and wait until every process (and the
        coordinator) is there. Returns the release time."""
        self.phase += 1
        self.shared.progress[self.index] = self._counter()
        self.shared.phase[self.index] = self.phase
        # The wait runs in a thread so this loop keeps serving its workers
        # while the other processes are still busy.
        timeout = self.cfg.setup_timeout + 3 * self.cfg.duration + 3 * self.cfg.grace
        await asyncio.to_thread(self.shared.barrier.wait, timeout)
        return time.monotonic()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()


class Control:
    """The coordinator's handle on the children."""

    def __init__(
        self,
        cfg: Config,
        shared: Shared,
        procs: list[Any],
        pipes: list[mpc.Connection],
        progress: ProgressLine,
    ) -> None:
        self.cfg = cfg
        self.shared = shared
        self.procs = procs
        self.pipes = pipes
        self.nprocs = len(procs)
        self.progress_line = progress
        self.phase = 0
        self.results: dict[int, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.start_cpu = _children_cpu()

    # -- children ---------------------------------------------------------

    def _poll(self, timeout: float) -> None:
        waiting = [p for i, p in enumerate(self.pipes) if i not in self.results]
        if not waiting:
            time.sleep(timeout)
            return
        for conn in mpc.wait(waiting, timeout):
            assert isinstance(conn, mpc.Connection)
            i = self.pipes.index(conn)
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                kind, payload = "error", f"process {i} exited without a result"
            if kind == "ok":
                self.results[i] = payload
            else:
                self.results[i] = {}
                self.errors.append(str(payload))
        if self.errors:
            self.shared.barrier.abort()
            raise ChildFailed("; ".join(self.errors))

    def progress(self) -> int:
        return int(sum(self.shared.progress[i] for i in range(self.nprocs)))

    def sync(self, label: str = "", total: int | None = None,
             timeout: float | None = None) -> float:
        """Wait until every child reached the next phase, then release them
        all at once. Returns the release time."""
        self.phase += 1
        limit = self.cfg.setup_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        t0 = time.monotonic()
        while any(self.shared.phase[i] < self.phase for i in range(self.nprocs)):
            self._poll(0.05)
            if label:
                self.progress_line.update(label, self.progress(), total, time.monotonic() - t0)
            if time.monotonic() > deadline:
                self.shared.barrier.abort()
                raise ChildFailed(f"timed out after {limit:.0f}s waiting for: {label or 'setup'}")
        self.progress_line.clear()
        try:
            self.shared.barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            self._poll(1.0)
            raise ChildFailed("a load process failed") from None
        return time.monotonic()

    def watch(
        self,
        label: str,
        total: int | None,
        until: Callable[[], bool],
        cap_s: float,
        stop_level: int | None = None,
    ) -> bool:
        """Show progress until until() holds or cap_s passes. On either, raise
        the stop flag to stop_level if given. Returns False when the cap hit."""
        t0 = time.monotonic()
        in_time = True
        while not until():
            elapsed = time.monotonic() - t0
            if elapsed >= cap_s:
                in_time = False
                break
            self.progress_line.update(label, self.progress(), total, elapsed,
                                      cap=cap_s if total is None else None)
            self._poll(0.05)
        self.progress_line.clear()
        if stop_level is not None:
            self.stop(stop_level)
        return in_time

    def all_reached(self, phase: int) -> bool:
        """Whether every child has arrived at phase (without releasing them)."""
        return all(self.shared.phase[i] >= phase for i in range(self.nprocs))

    def stop(self, level: int) -> None:
        self.shared.stop.value = level

    def collect(self) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.cfg.grace + 30
        while len(self.results) < self.nprocs:
            if time.monotonic() > deadline:
                raise ChildFailed("load processes did not report back")
            self._poll(0.1)
        for p in self.procs:
            p.join(5)
        return [self.results[i] for i in range(self.nprocs)]

    def tool_cpu(self) -> float:
        return _children_cpu() - self.start_cpu

    # -- servers ----------------------------------------------------------

    def status(self, func: str) -> list[FunctionStatus | None]:
        """The function's admin status on every server (None: not listed)."""
        out: list[FunctionStatus | None] = []
        for server in self.cfg.servers:
            out.append(admin_status(server).get(func))
        return out


def queued_view(per_server: list[FunctionStatus | None]) -> tuple[int, int, str]:
    """(total, running) across servers, and how they were combined.

    Independent servers each report their own jobs, so the totals add up. A
    cluster node may instead report the cluster-wide figure; when every server
    reports the same non-zero figure it is taken once, because independent
    servers showing identical counts for a run-unique function would mean the
    jobs were created once per server, which the per-run checks catch anyway.
    """
    totals = [s.total if s else 0 for s in per_server]
    running = [s.running if s else 0 for s in per_server]
    if len(totals) > 1 and len(set(totals)) == 1 and totals[0] > 0:
        return totals[0], running[0], "cluster-wide (every server reports the same)"
    return sum(totals), sum(running), "sum over servers"


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _run_child(
    make: Callable[[Config], Scenario],
    cfg: Config,
    index: int,
    procs: int,
    shared: Shared,
    conn: mpc.Connection,
) -> None:
    # The coordinator handles Ctrl-C and ends the children itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rt = ChildRuntime(cfg, index, procs, shared)
    try:
        scenario = make(cfg)
        result = run_loop(_child_main(scenario, rt))
        conn.send(("ok", result))
    except BaseException as exc:  # report anything, including BrokenBarrier
        shared.barrier.abort()
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if not isinstance(exc, threading.BrokenBarrierError | ConnectionError | OSError
                          | TimeoutError):
            detail += "\n" + traceback.format_exc(limit=6)
        with contextlib.suppress(OSError):
            conn.send(("error", f"process {index}: {detail}"))
    finally:
        conn.close()


async def _child_main(scenario: Scenario, rt: ChildRuntime) -> dict[str, Any]:
    t0 = os.times()
    try:
        result = await scenario.child(rt)
    finally:
        rt.close()
    t1 = os.times()
    result.setdefault("cpu_s", (t1.user - t0.user) + (t1.system - t0.system))
    return result


def run_loop(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop  # optional speed-up
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _context() -> Any:
    # fork starts a child in milliseconds, and the coordinator has no threads
    # or event loop running at that point, which is what makes fork safe.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


@dataclass
class RunResult:
    outcome: Outcome
    error: str | None
    procs: int
    elapsed_s: float
    tool_cpu_s: float


def execute(make: Callable[[Config], Scenario], cfg: Config) -> RunResult:
    scenario = make(cfg)
    nprocs = max(1, min(cfg.procs, scenario.procs()))
    ctx = _context()
    shared = Shared(
        progress=ctx.RawArray("q", nprocs),
        phase=ctx.RawArray("i", nprocs),
        stop=ctx.RawValue("i", 0),
        barrier=ctx.Barrier(nprocs + 1),
    )
    procs: list[Any] = []
    pipes: list[mpc.Connection] = []
    sends: list[mpc.Connection] = []
    for i in range(nprocs):
        recv_end, send_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_run_child, args=(make, cfg, i, nprocs, shared, send_end),
                        daemon=True, name=f"bench-{cfg.scenario}-{i}")
        procs.append(p)
        pipes.append(recv_end)
        sends.append(send_end)
    t0 = time.monotonic()
    for p, send_end in zip(procs, sends, strict=True):
        p.start()
        # Only the child may hold the writing end, so that a child dying
        # shows up here as EOF instead of a silent wait.
        send_end.close()
    progress = ProgressLine(cfg.progress and sys.stderr.isatty())
    ctl = Control(cfg, shared, procs, pipes, progress)
    error: str | None = None
    outcome = Outcome()
    try:
        outcome = scenario.parent(ctl)
    except ChildFailed as exc:
        error = str(exc)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        progress.clear()
        shared.stop.value = 1 << 30
        with contextlib.suppress(Exception):
            shared.barrier.abort()
        for p in procs:
            p.join(2 if error is None else 0.5)
            if p.is_alive():
                p.terminate()
                p.join(2)
    return RunResult(outcome, error, nprocs, time.monotonic() - t0, ctl.tool_cpu())


def servers_reachable(servers: tuple[Server, ...]) -> str | None:
    """Whether each server accepts a connection. Only that: servers differ in
    which optional requests they answer (gear's own server knows neither ECHO
    nor the admin `version`), and the run itself checks every reply."""
    for server in servers:
        try:
            socket.create_connection((server.host, server.port), timeout=5.0).close()
        except OSError as exc:
            return f"{server}: {exc}"
    return None
