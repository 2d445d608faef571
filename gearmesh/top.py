"""`gearmesh top`: the dashboard's live view in a terminal (rich), `q` quits.

It reads the same cluster view as `gearmesh status` (``--etcd``, ``--api``
or ``--servers``) every ``--interval`` seconds. Keys are read from the
terminal in cbreak mode on the event loop, so a refresh never waits for a
key and a key never waits for a refresh.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gearmesh.status import collect

BARS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[int], width: int) -> str:
    """The last ``width`` seconds as block characters, scaled to their max."""
    tail = values[-width:] if width > 0 else []
    top = max(tail, default=0)
    if top <= 0:
        return BARS[1] * len(tail)
    return "".join(BARS[max(1, round(v / top * (len(BARS) - 1)))] if v else BARS[1]
                   for v in tail)


def render(view: dict[str, Any] | None, error: str, width: int = 100) -> Group:
    if view is None:
        return Group(Text("gearmesh top — waiting for the first answer…" if not error
                          else f"gearmesh top — {error}", style="bold"))
    t = view["totals"]
    r = view["rates"]
    down = sum(1 for n in view["nodes"] if not n["reachable"])
    head = Text.assemble(
        ("gearmesh top", "bold"), f"  nodes {len(view['nodes'])}",
        (f" ({down} down)" if down else "", "bold red"),
        f"  queued {t['queued']}  running {t['running']}  workers {t['workers']}",
        f"  {r['submitted']:.1f} submitted/s  {r['completed']:.1f} completed/s",
        f"   {time.strftime('%H:%M:%S')}", (f"  {error}" if error else "", "red"),
        "   q quits")
    parts: list[Any] = [head]
    h = view.get("history")
    if h:
        w = max(10, min(width - 16, 120))
        parts.append(Text.assemble(("submitted ", "blue"), sparkline(h["submitted"], w)))
        parts.append(Text.assemble(("completed ", "green"), sparkline(h["completed"], w)))

    fn = Table(title="functions", title_justify="left", expand=False, box=None,
               header_style="bold")
    fn.add_column("function")
    for col in ("queued", "running", "workers"):
        fn.add_column(col, justify="right")
    fn.add_column("")
    for f in view["functions"]:
        stuck = bool(f.get("stuck"))
        fn.add_row(f["name"], str(f["queued"]), str(f["running"]), str(f["workers"]),
                   "NO WORKER" if stuck else "", style="bold red" if stuck else None)
    parts.append(fn)

    nodes = Table(title="nodes", title_justify="left", box=None, header_style="bold")
    for col in ("node", "state", "epoch", "partitions", "links", "conns", "workers",
                "sub/s", "done/s", "commit ms"):
        nodes.add_column(col, justify="left" if col in ("node", "state", "links") else "right")
    for n in view["nodes"]:
        links = n.get("links") or {}
        bad = [f"{p} {s}" for p, s in links.items() if s != "up"]
        link_text = ", ".join(bad) if bad else (f"{len(links)} up" if links else "-")
        state = n["state"] if n["reachable"] else f"{n['state']} DOWN: {n.get('error', '')}"
        rates = n.get("rates") or {}
        commit = (n.get("store") or {}).get("commit_ms")
        nodes.add_row(n["id"], state, _dash(n.get("epoch")), _dash(n.get("partitions")),
                      link_text, str(n.get("connections", 0)), str(n.get("workers", 0)),
                      f"{rates.get('submitted', 0):.1f}", f"{rates.get('completed', 0):.1f}",
                      "-" if commit is None else f"{commit:.2f}",
                      style=None if n["reachable"] and not bad else "red")
    parts.append(nodes)

    wk = Table(title="workers", title_justify="left", box=None, header_style="bold")
    for col in ("node", "client id", "peer", "functions", "state"):
        wk.add_column(col)
    for w in view["workers"][:30]:
        wk.add_row(w["node"], w["client_id"], w["peer"], ", ".join(w["functions"]), w["state"])
    if len(view["workers"]) > 30:
        wk.add_row(f"… {len(view['workers']) - 30} more", "", "", "", "")
    parts.append(wk)
    return Group(*parts)


def _dash(v: object) -> str:
    return "-" if v is None else str(v)


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    old = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


async def _main(ns: argparse.Namespace) -> int:
    console = Console()
    quit_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    def on_key() -> None:
        data = os.read(fd, 64)
        if not data or b"q" in data.lower():
            quit_event.set()

    loop.add_reader(fd, on_key)
    view: dict[str, Any] | None = None
    error = ""
    try:
        with _cbreak(fd), Live(render(None, ""), console=console, screen=True,
                               auto_refresh=False) as live:
            while not quit_event.is_set():
                try:
                    view = await collect(ns.etcd, ns.etcd_prefix, ns.servers, ns.api)
                    error = ""
                except Exception as e:  # keep showing the last view, say what failed
                    error = f"no answer: {e}"
                live.update(render(view, error, console.width), refresh=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(quit_event.wait(), ns.interval)
    finally:
        loop.remove_reader(fd)
    return 0


def run_top(ns: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(ns))
    except KeyboardInterrupt:
        return 0
