"""Admin text-protocol queries used to synchronise tests with server state:
the one admin client of the tests (``gearadmin_status`` asks the real
``gearadmin`` CLI, for tests that compare against what operators see)."""

from __future__ import annotations

import ssl
import subprocess

from tests.support.rawclient import RawClient
from tests.support.waiting import wait_until

Address = tuple[str, int] | str


def admin_list(address: Address, command: str, tls: ssl.SSLContext | None = None) -> list[str]:
    with RawClient(address, tls=tls) as conn:
        return conn.admin_list(command)


def status(address: Address, tls: ssl.SSLContext | None = None
           ) -> dict[str, tuple[int, int, int]]:
    """``status`` as {function: (total, running, workers)}."""
    out: dict[str, tuple[int, int, int]] = {}
    for line in admin_list(address, "status", tls):
        name, total, running, workers = line.rsplit("\t", 3)
        out[name] = (int(total), int(running), int(workers))
    return out


def wait_for_status(
    address: Address,
    func: str,
    *,
    total: int | None = None,
    running: int | None = None,
    workers: int | None = None,
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, int, int]:
    """Poll ``status`` until ``func`` shows the given counters (None = any)."""

    def check() -> tuple[int, int, int] | None:
        row = status(address, tls).get(func)
        if row is None:
            return None
        want = (total, running, workers)
        if all(w is None or w == got for w, got in zip(want, row, strict=True)):
            return row
        return None

    try:
        row = wait_until(check, timeout, what=f"{func!r} to show {(total, running, workers)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; status now: {status(address, tls)}") from None
    return row


def connection_count(address: Address) -> int:
    """Open connections the server knows of, including the asking one."""
    return len(admin_list(address, "workers"))


def gearadmin_status(port: int) -> dict[str, tuple[int, int, int]]:
    """`gearadmin --status` as {function: (total, running, workers)}."""
    out = subprocess.run(["gearadmin", "-h", "127.0.0.1", "-p", str(port), "--status"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    rows = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            rows[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return rows
