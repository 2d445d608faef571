"""coalesce: K unique ids, each submitted (SUBMIT_JOB) by R clients spread
over the servers; counts how many times the workers ran. A correct server or
cluster runs each unique once, so runs must be exactly K.

All K x R submissions are acknowledged before any worker starts grabbing.
Without that, a fast worker could finish a job before its last duplicate
arrived, and the late submit would rightly create a new job: a correct
server would then look wrong.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

from gearmesh.bench import wire
from gearmesh.bench.config import Config
from gearmesh.bench.engine import ChildRuntime, Control, Outcome
from gearmesh.bench.roles import WorkerStats
from gearmesh.bench.scenarios.common import (
    client_server,
    connect_workers,
    owned_keys,
    queue_empty,
    stop_workers,
    throttled,
    total,
    worker_checks,
    worker_result,
)
from node import protocol as P

# Phases: 1 connected, 2 go (submit), 3 all acknowledged (workers start).


class CoalesceClient(wire.PacketProtocol):
    """Submits every unique once, pipelined, then collects the results."""

    def __init__(self, func: bytes, uniques: list[bytes], size: int) -> None:
        super().__init__()
        self.func = func
        self.uniques = uniques
        self.size = size
        self.created = 0
        self.results = 0
        self.mismatch = 0
        self.unknown_handle = 0
        self.failed = 0
        self.errors = 0
        self.unexpected = 0
        self.first_error = ""
        self.by_handle: dict[bytes, list[int]] = {}
        self.handles: list[bytes] = []
        self.last = 0.0
        loop = asyncio.get_running_loop()
        self.acked: asyncio.Future[None] = loop.create_future()

    def start(self) -> None:
        mk = wire.submit_packet
        self.write(b"".join(
            mk(P.SUBMIT_JOB, self.func, u, wire.payload_for(u, self.size))
            for u in self.uniques
        ))

    def _created(self) -> None:
        self.created += 1
        if self.created == len(self.uniques) and not self.acked.done():
            self.acked.set_result(None)

    def on_packet(self, ptype: int, payload: bytes) -> None:
        if ptype == P.JOB_CREATED:
            # Replies to submits come back in submission order.
            self.by_handle.setdefault(payload, []).append(self.created)
            self.handles.append(payload)
            self._created()
        elif ptype == P.WORK_COMPLETE:
            handle, _, data = payload.partition(b"\0")
            ks = self.by_handle.pop(handle, None)
            if ks is None:
                self.unknown_handle += 1
                return
            self.last = time.monotonic()
            for k in ks:
                self.results += 1
                if data != wire.payload_for(self.uniques[k], self.size):
                    self.mismatch += 1
        elif ptype == P.ERROR:
            self.errors += 1
            if not self.first_error:
                self.first_error = wire.error_text(payload)
            if self.created < len(self.uniques):
                self._created()
        elif ptype in (P.WORK_FAIL, P.WORK_EXCEPTION):
            self.failed += 1
        elif ptype not in (P.WORK_DATA, P.WORK_STATUS, P.WORK_WARNING):
            self.unexpected += 1

    def on_lost(self) -> None:
        if not self.acked.done():
            self.acked.set_result(None)


class CoalesceScenario:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        bases = [f"{cfg.run_id}-u{k}".encode() for k in range(cfg.uniques)]
        self.uniques = owned_keys(cfg, bases) or bases
        self.index = {u: k for k, u in enumerate(self.uniques)}

    def procs(self) -> int:
        return max(1, min(self.cfg.repeat, self.cfg.workers))

    async def child(self, rt: ChildRuntime) -> dict[str, Any]:
        cfg = self.cfg
        func = cfg.func.encode()
        clients = []
        for n in rt.mine(cfg.repeat):
            clients.append(await wire.open_connection(
                client_server(cfg, n),
                lambda: CoalesceClient(func, self.uniques, cfg.payload_size)))
        runs = array("i", bytes(4 * cfg.uniques))
        foreign = [0]
        index = self.index

        def handler(unique: bytes, data: bytes) -> bytes:
            k = index.get(unique)
            if k is None:
                foreign[0] += 1
            else:
                runs[k] += 1
            return data

        wstats = WorkerStats()
        workers = await connect_workers(rt, handler, wstats, cfg.work_ms / 1000.0)
        rt.count_with(lambda: sum(c.created for c in clients))
        await rt.sync()
        start = await rt.sync()
        for c in clients:
            c.start()
        await asyncio.gather(*(c.acked for c in clients))
        acked_at = time.monotonic()
        rt.count_with(lambda: sum(c.results for c in clients))
        released = await rt.sync()
        for w in workers:
            w.begin()
        await rt.wait_stop(1)
        late = await stop_workers(workers, cfg.grace)
        for c in clients:
            if c.transport is not None:
                c.transport.close()
        # Which handles each client got per unique, for the distinct-job count
        # on single servers (handles are only comparable within one server).
        handle_sets: dict[int, list[bytes]] = {}
        for i, c in zip(rt.mine(cfg.repeat), clients, strict=True):
            handle_sets[i] = c.handles
        result: dict[str, Any] = {
            "start": start, "acked_at": acked_at, "released": released,
            "last": max((c.last for c in clients), default=released),
            "created": sum(c.created for c in clients),
            "results": sum(c.results for c in clients),
            "mismatch": sum(c.mismatch for c in clients),
            "unknown_handle": sum(c.unknown_handle for c in clients),
            "failed": sum(c.failed for c in clients),
            "errors": sum(c.errors for c in clients),
            "unexpected": sum(c.unexpected for c in clients),
            "first_error": next((c.first_error for c in clients if c.first_error), ""),
            "runs": runs, "foreign": foreign[0], "late_workers": late,
            "handles": handle_sets,
        }
        result.update(worker_result(wstats))
        return result

    def parent(self, ctl: Control) -> Outcome:
        cfg = self.cfg
        out = Outcome()
        k_total, r = cfg.uniques, cfg.repeat
        expected = k_total * r
        ctl.sync("connecting")
        ctl.sync()
        ctl.sync("submitting", total=expected, timeout=cfg.duration)
        got_all = ctl.watch("coalesce", expected, lambda: ctl.progress() >= expected,
                            cfg.duration)
        # Wait for the queues to be empty too: a job that was stored twice
        # may still be waiting after every client already has a result.
        empty = ctl.watch("settling", None, throttled(queue_empty(ctl), 0.2),
                          min(cfg.grace, 10.0), stop_level=1)
        results = ctl.collect()

        runs = [0] * k_total
        for res in results:
            for k, n in enumerate(res["runs"]):
                runs[k] += n
        run_total = sum(runs)
        over = sum(n - 1 for n in runs if n > 1)
        never = sum(1 for n in runs if n == 0)
        multi = sum(1 for n in runs if n > 1)
        got = total(results, "results")
        created = total(results, "created")
        bad = total(results, "mismatch")
        errors = total(results, "errors") + total(results, "failed") + \
            total(results, "unexpected") + total(results, "unknown_handle")
        foreign = total(results, "foreign")
        start = min(res["start"] for res in results)
        acked_at = max(res["acked_at"] for res in results)
        released = max(res["released"] for res in results)
        last = max(res["last"] for res in results)
        # Distinct handles per server, when clients share a server.
        per_server: dict[int, set[bytes]] = {}
        for res in results:
            for ci, handles in res["handles"].items():
                per_server.setdefault(ci % len(cfg.client_servers), set()).update(handles)
        distinct = sum(len(s) for s in per_server.values())
        out.metrics.update({
            "uniques": k_total, "repeat": r, "submissions": expected, "acknowledged": created,
            "runs": run_total, "extra_runs": over, "uniques_run_twice_or_more": multi,
            "uniques_never_run": never, "results": got, "mismatch": bad, "errors": errors,
            "distinct_handles": distinct,
            "submit_s": round(acked_at - start, 4),
            "complete_s": round(max(last - released, 0.0), 4),
        })
        out.rows += [
            ("submissions", f"{expected:,} ({k_total:,} uniques x {r} clients over "
                            f"{len(cfg.client_servers)} server(s)); acknowledged {created:,} "
                            f"in {acked_at - start:.3f} s"),
            ("worker runs", f"{run_total:,} (expected {k_total:,}); extra runs {over:,}, "
                            f"never run {never:,}"),
            ("results received", f"{got:,} of {expected:,} in {max(last - released, 0):.3f} s"),
            ("distinct job handles", f"{distinct:,} (summed per server)"),
        ]
        first = next((res["first_error"] for res in results if res.get("first_error")), "")
        out.check("workers ran each unique exactly once (runs == K)",
                  run_total == k_total and over == 0 and never == 0 and foreign == 0,
                  f"runs={run_total} K={k_total} extra={over} never={never} foreign={foreign}")
        out.check("every submitter got the unique's result",
                  got == expected and bad == 0 and got_all,
                  f"results={got}/{expected} mismatches={bad}")
        out.check("no errors", errors == 0 and created == expected,
                  f"errors={errors} acknowledged={created}/{expected}"
                  + (f" first={first!r}" if first else ""))
        out.check("queues empty afterwards", empty)
        ok, detail = worker_checks(results)
        out.check("workers saw no errors", ok, detail)
        return out
