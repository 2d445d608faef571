"""burst --overload: more submits than the server can take, then a drain.

The flash-sale shape of issue reports: --clients connections each write
--pipeline background submits (distinct uniques) every --every-ms for
--duration seconds without waiting for JOB_CREATED — far past what a server
absorbs — then workers start and drain the queue. A client behaves like a
blocking one: while its socket does not take more (the server stopped
reading it, and TCP pushed back), it skips its turns instead of buffering
without bound, so the offered rate falls to what the server accepts.

A ledger per unique shows what the server promised and kept:
acknowledged (JOB_CREATED), refused (any ERROR), unanswered at the end,
lost (acknowledged, never run), duplicated (run more than once). A server
that slows clients down passes with 0 refused, 0 lost, 0 duplicated.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter, deque
from typing import Any

from gearmesh.bench import wire
from gearmesh.bench.config import Config
from gearmesh.bench.engine import ChildRuntime, Control, Outcome
from gearmesh.bench.roles import WorkerStats
from gearmesh.bench.scenarios.common import (
    client_server,
    connect_workers,
    queue_empty,
    stop_workers,
    throttled,
    worker_checks,
    worker_result,
)
from gearmesh.bench.stats import fmt_rate
from node import protocol as P


class OverloadClient(wire.PacketProtocol):
    def __init__(self, cfg: Config, number: int, end_at: float) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.func = cfg.func.encode()
        self.size = cfg.payload_size
        self.pipeline = cfg.pipeline
        self.every = cfg.every_ms / 1000.0
        self.end_at = end_at
        self.prefix = f"{cfg.run_id}-o{number}-".encode()
        self.seq = 0
        self.outstanding: deque[bytes] = deque()
        self.acked: list[bytes] = []
        self.refused: Counter[str] = Counter()
        self.submitted = 0
        self.blocked_turns = 0
        self.turns = 0
        self.paused = False
        self.answered: asyncio.Future[None] = self.loop.create_future()
        self.sending = True

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def start(self) -> None:
        self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        if time.monotonic() >= self.end_at or self.transport is None \
                or self.transport.is_closing():
            self.sending = False
            self._check_answered()
            return
        self.turns += 1
        if self.paused:
            self.blocked_turns += 1  # a blocking client would be stuck in write()
        else:
            out = []
            for _ in range(self.pipeline):
                self.seq += 1
                unique = self.prefix + b"%d" % self.seq
                out.append(wire.submit_packet(P.SUBMIT_JOB_BG, self.func, unique,
                                              wire.payload_for(unique, self.size)))
                self.outstanding.append(unique)
            self.submitted += self.pipeline
            self.write(b"".join(out))
        self.loop.call_later(self.every, self._turn)

    def on_packet(self, ptype: int, payload: bytes) -> None:
        if not self.outstanding:
            self.refused["reply to nothing"] += 1
            return
        unique = self.outstanding.popleft()
        if ptype == P.JOB_CREATED:
            self.acked.append(unique)
        elif ptype == P.ERROR:
            self.refused[wire.error_text(payload)[:80]] += 1
        else:
            self.refused[f"packet {ptype}"] += 1
        self._check_answered()

    def _check_answered(self) -> None:
        if not self.sending and not self.outstanding and not self.answered.done():
            self.answered.set_result(None)

    def on_lost(self) -> None:
        self.sending = False
        if not self.answered.done():
            self.answered.set_result(None)


class OverloadScenario:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def procs(self) -> int:
        return max(1, min(self.cfg.clients, self.cfg.procs))

    async def child(self, rt: ChildRuntime) -> dict[str, Any]:
        cfg = self.cfg
        wstats = WorkerStats()
        # Connected now, grabbing only after the submit phase: the queue
        # holds everything the server acknowledged, then drains.
        workers = await connect_workers(rt, lambda _u, data: data, wstats, record_runs=True)
        clients: list[OverloadClient] = []
        rt.count_with(lambda: sum(len(c.acked) for c in clients))
        await rt.sync()
        start = await rt.sync()
        end_at = start + cfg.duration
        for n in rt.mine(cfg.clients):
            c = await wire.open_connection(client_server(cfg, n),
                                           functools.partial(OverloadClient, cfg, n, end_at))
            clients.append(c)
            c.start()
        await asyncio.wait([c.answered for c in clients],
                           timeout=max(0.0, end_at + cfg.grace - time.monotonic()))
        answered_at = time.monotonic()
        await rt.sync()
        drain_from = time.monotonic()
        for w in workers:
            w.begin()
        await rt.wait_stop(1)
        drained_at = time.monotonic()
        late = await stop_workers(workers, cfg.grace)
        for c in clients:
            if c.transport is not None:
                c.transport.close()
        refused: Counter[str] = Counter()
        for c in clients:
            refused.update(c.refused)
        result: dict[str, Any] = {
            "start": start, "answered_at": answered_at, "drain_from": drain_from,
            "drained_at": drained_at,
            "submitted": sum(c.submitted for c in clients),
            "acked": [u for c in clients for u in c.acked],
            "refused": dict(refused),
            "unanswered": sum(len(c.outstanding) for c in clients),
            "turns": sum(c.turns for c in clients),
            "blocked_turns": sum(c.blocked_turns for c in clients),
            "runs": [u for u, _, _ in wstats.runs],
            "late_workers": late,
        }
        result.update(worker_result(wstats))
        return result

    def parent(self, ctl: Control) -> Outcome:
        cfg = self.cfg
        ctl.sync("connecting")
        ctl.sync()
        ctl.sync("submitting", timeout=cfg.duration + cfg.grace + 10)
        drained = ctl.watch("draining", None, throttled(queue_empty(ctl), 0.25),
                            max(cfg.grace, 5.0) * 4, stop_level=1)
        return self._report(ctl.collect(), drained)

    def _report(self, results: list[dict[str, Any]], drained: bool) -> Outcome:
        cfg = self.cfg
        out = Outcome()
        acked: set[bytes] = set()
        runs: Counter[bytes] = Counter()
        refused: Counter[str] = Counter()
        for r in results:
            acked.update(r["acked"])
            runs.update(r["runs"])
            refused.update(r["refused"])
        submitted = sum(r["submitted"] for r in results)
        unanswered = sum(r["unanswered"] for r in results)
        lost = len(acked - set(runs))
        duplicated = sum(1 for n in runs.values() if n > 1)
        t0 = min(r["start"] for r in results)
        answered = max(r["answered_at"] for r in results) - t0
        drain_s = max(r["drained_at"] for r in results) - min(r["drain_from"] for r in results)
        turns = sum(r["turns"] for r in results)
        blocked = sum(r["blocked_turns"] for r in results)
        offered = cfg.clients * cfg.pipeline / (cfg.every_ms / 1000.0)
        out.metrics.update({
            "clients": cfg.clients, "pipeline": cfg.pipeline, "every_ms": cfg.every_ms,
            "duration_s": cfg.duration, "offered_per_s": offered,
            "submitted": submitted, "acknowledged": len(acked),
            "acked_per_s": round(len(acked) / max(answered, 1e-9), 1),
            "refused": sum(refused.values()), "refused_by_reason": dict(refused),
            "unanswered": unanswered, "lost": lost, "duplicated": duplicated,
            "runs": sum(runs.values()), "blocked_turns": blocked, "turns": turns,
            "drain_s": round(drain_s, 3), "drained": drained,
        })
        out.rows += [
            ("load", f"{cfg.clients} connections x {cfg.pipeline} pipelined bg submits every "
                     f"{cfg.every_ms:g} ms for {cfg.duration:g} s "
                     f"(offered {fmt_rate(offered)}/s)"),
            ("acknowledged", f"{len(acked):,} of {submitted:,} sent "
                             f"({fmt_rate(len(acked) / max(answered, 1e-9))}/s); "
                             f"{blocked:,} of {turns:,} turns blocked by flow control"),
            ("refused", f"{sum(refused.values()):,}" + (f" {dict(refused)}" if refused else "")),
            ("unanswered", f"{unanswered:,}"),
            ("lost / duplicated", f"{lost:,} / {duplicated:,}"),
            ("drain", f"{sum(runs.values()):,} runs in {drain_s:.1f} s"),
        ]
        out.check("no submit refused", not refused, str(dict(refused)) if refused else "")
        out.check("every submit answered", unanswered == 0, f"unanswered={unanswered}")
        out.check("no acknowledged job lost", lost == 0, f"lost={lost}")
        out.check("no job run twice", duplicated == 0, f"duplicated={duplicated}")
        out.check("queue drained afterwards", drained)
        ok, detail = worker_checks(results)
        out.check("workers saw no errors", ok, detail)
        return out
