"""Fixtures for the cluster building blocks: a real etcd, an asyncio runner
that fails a test on any exception escaping into the event loop, and child
processes (peer-link endpoints, members) that a test can kill -9."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

# The suite imports its helpers as ``tests.support``; the repository root is
# not on sys.path when pytest imports this file in its default import mode.
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.etcd import EtcdServer  # noqa: E402
from tests.support.procs import Spawned  # noqa: E402

CHILD = Path(__file__).resolve().parent / "child.py"
T = TypeVar("T")


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def run() -> Callable[..., Any]:
    """``run(coro, timeout=...)``: drive a coroutine on a fresh loop; fail if
    anything raised inside the loop went unhandled (a task's exception that
    nobody retrieved, a failing callback)."""

    def runner(coro: Coroutine[Any, Any, T], timeout: float = 45.0) -> T:
        escaped: list[dict[str, Any]] = []

        async def main() -> T:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
            try:
                async with asyncio.timeout(timeout):
                    return await coro
            except TimeoutError:
                raise AssertionError(
                    f"test coroutine still running after {timeout}s; tasks:\n{_tasks()}"
                ) from None

        result = asyncio.run(main())
        assert not escaped, f"exceptions escaped into the event loop: {escaped!r}"
        return result

    return runner


def _tasks() -> str:
    """Where every task of the running loop is waiting, for a hang report."""
    lines = []
    for task in asyncio.all_tasks():
        chain = []
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        lines.append(f"  {task.get_name()}: " + " -> ".join(chain))
    return "\n".join(lines)


@pytest.fixture
def spawn_child() -> Generator[Callable[..., Spawned], None, None]:
    """Start ``tests/cluster/child.py <args>``; all are killed at teardown."""
    started: list[Spawned] = []

    def factory(args: Sequence[str], name: str = "child") -> Spawned:
        proc = Spawned([sys.executable, str(CHILD), *args], name=name, cwd=str(REPO))
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.kill()


@pytest.fixture
def cluster_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="gearmesh.cluster")
    return caplog


# The TLS tests' certificates (made once per session with openssl).
from tests.support.certs import pki  # noqa: E402, F401
