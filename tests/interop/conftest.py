"""Fixtures for the interoperability suite: a fresh server per test, and a
factory for client processes whose output is shown when a test fails."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

# The suite imports its helpers as ``tests.support``; the repository root is
# not on sys.path when pytest imports this file in its default import mode.
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.procs import Spawned  # noqa: E402
from tests.support.servers import GEARMAND, ServerProcess, server_kind  # noqa: E402

INTEROP = Path(__file__).resolve().parent
PHP_DIR = INTEROP / "php"
PERL_DIR = INTEROP / "perl"

_REPORT_KEY = pytest.StashKey[list[tuple[str, Callable[[], str]]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gearmesh_only: gearmesh deliberately differs from gearmand 1.1.20 here "
        "(a gearmand bug); skipped when GEARMESH_TEST_SERVER=gearmand",
    )
    config.addinivalue_line(
        "markers", "server_args(*args): extra command-line flags for the `server` fixture"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if server_kind() != GEARMAND:
        return
    skip = pytest.mark.skip(reason="gearmesh fixes a gearmand 1.1.20 bug here")
    for item in items:
        if "gearmesh_only" in item.keywords:
            item.add_marker(skip)


def _attach(request: pytest.FixtureRequest, title: str, text: Callable[[], str]) -> None:
    request.node.stash.setdefault(_REPORT_KEY, []).append((title, text))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for title, text in item.stash.get(_REPORT_KEY, []):
            report.sections.append((title, text() or "(no output)"))
    return report


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed")


class _Spares:
    """Keeps one default server launched ahead of time, so a test does not
    wait for the server to boot (gearmesh spends most of that importing)."""

    def __init__(self) -> None:
        self._next: ServerProcess | None = None

    def take(self) -> ServerProcess:
        proc = self._next
        self._next = ServerProcess()
        self._next.launch()
        if proc is None:
            proc = ServerProcess()
            proc.launch()
        return proc

    def close(self) -> None:
        if self._next is not None:
            self._next.stop()


@pytest.fixture(scope="session")
def _spares() -> Iterator[_Spares]:
    spares = _Spares()
    yield spares
    spares.close()


@pytest.fixture
def server(
    request: pytest.FixtureRequest, tmp_path: Path, _spares: _Spares
) -> Iterator[ServerProcess]:
    """A fresh server on a free loopback port; extra flags via @pytest.mark.server_args."""
    marker = request.node.get_closest_marker("server_args")
    if marker:
        workdir = tmp_path / "server"
        workdir.mkdir()
        proc = ServerProcess([str(a) for a in marker.args], workdir=workdir)
    else:
        proc = _spares.take()
    _attach(request, f"{proc.kind} server log", proc.log_text)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


SpawnFactory = Callable[..., Spawned]


@pytest.fixture
def spawn(request: pytest.FixtureRequest) -> Generator[SpawnFactory, None, None]:
    """Start client programs; all are killed at teardown, their output is
    attached to the report of a failing test."""
    started: list[Spawned] = []

    def factory(argv: Sequence[str], **kwargs: Any) -> Spawned:
        proc = Spawned(argv, **kwargs)
        started.append(proc)
        _attach(request, f"output of {proc.name} (pid {proc.pid})", proc.output)
        return proc

    yield factory
    for proc in started:
        proc.kill()


@pytest.fixture
def php(spawn: SpawnFactory, server: ServerProcess) -> Callable[..., Spawned]:
    """Run one of tests/interop/php/*.php with the server address as argv[1]."""
    _need("php")

    def run(script: str, *args: str, name: str | None = None) -> Spawned:
        argv = ["php", str(PHP_DIR / script), server.address, *map(str, args)]
        return spawn(argv, name=name or script)

    return run


@pytest.fixture
def perl(spawn: SpawnFactory, server: ServerProcess) -> Callable[..., Spawned]:
    """Run one of tests/interop/perl/*.pl with the server address as argv[1]."""
    _need("perl")

    def run(script: str, *args: str, name: str | None = None) -> Spawned:
        argv = ["perl", str(PERL_DIR / script), server.address, *map(str, args)]
        return spawn(argv, name=name or script)

    return run
